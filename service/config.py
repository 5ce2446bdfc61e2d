"""Every knob of the service, read from environment variables (e.g. `MODEL_DIR`, `API_KEY`).

Tests and embedding code build a `Settings(...)` directly; `python -m service` reads the
environment (and a `.env` file if present). Names are case-insensitive, no prefix.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    # env_ignore_empty: `NAME=` (as docker-compose passes a variable left unset) means the default
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", protected_namespaces=(), env_ignore_empty=True)

    # where models come from
    model_dir: Path = Field(Path("models"), description="model store root: <dir>/<name>/<version>/")
    reload_interval_seconds: float = Field(5.0, ge=0, description="how often the store is polled; 0 disables")

    # network
    host: str = Field("127.0.0.1", description="default for `python -m service --host`")
    port: int = Field(8000, ge=0, le=65535, description="default for `python -m service --port`")
    api_key: SecretStr | None = Field(
        None, description="if set, every route but the health probes, the page files and the docs needs X-API-Key"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins, comma-separated; empty: CORS closed"
    )
    workers: int = Field(
        2,
        gt=0,
        description="uvicorn worker processes, each with its own event loop and copy of every model; they share "
        "the prediction ids and the metrics. On 2 cores, 2 measured 1.5x the requests/s of 1 at digits c=32 and "
        "1.2x at fruits c=16 (bench/README.md)",
    )
    log_level: str = Field("info", description="uvicorn and service log level")
    access_log: bool = Field(False, description="one log line per request (costs throughput)")
    graceful_shutdown_seconds: float = Field(10.0, ge=0, description="time given to in-flight requests on stop")

    # request limits
    max_body_bytes: int = Field(20 * MiB, gt=0, description="largest request body accepted")
    max_images_per_request: int = Field(64, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0, description="width*height limit, checked before decoding")
    max_top_k: int = Field(100, gt=0)

    # batching and inference
    max_batch_size: int = Field(32, gt=0, description="images per model call")
    max_batch_wait_us: int = Field(
        0,
        ge=0,
        description="how long a batch may wait for more requests (only while under load); 0: batches form "
        "from what queued while the model ran. Measured 1.2-1.3x the requests/s of 1000 at digits c=32 and "
        "fruits c=16 (bench/README.md)",
    )
    max_queue_size: int = Field(512, gt=0, description="images waiting per model version before 503")
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After sent with 503 queue full")
    pad_batches: bool = Field(
        False,
        description="pad batches to power-of-two sizes warmed at load time; off by default: unpadded batches "
        "measured 1.3-2x the images/s on every runtime, and a batch size's first call costs at most ~12 ms once",
    )
    tf_intra_op_threads: int = Field(0, ge=0, description="TensorFlow intra-op threads; 0: TF default")
    tf_inter_op_threads: int = Field(0, ge=0, description="TensorFlow inter-op threads; 0: TF default")
    batch_workers: int = Field(1, gt=0, description="batches of one model version that may run at once")
    inline_call_us: int = Field(
        1000,
        ge=0,
        description="a model call whose batch size recently took at most this long runs on the event loop, "
        "saving the hand-off to the inference thread (0: always the thread)",
    )
    inference_threads: int = Field(
        1, gt=0, description="threads calling models; each call uses the TF pools (>= batch_workers)"
    )
    decode_threads: int = Field(2, gt=0, description="threads decoding large images")
    load_threads: int = Field(1, gt=0, description="threads loading and warming model versions")

    # recent prediction inputs, kept for the activations API
    input_cache_ttl_seconds: float = Field(900.0, gt=0)
    input_cache_max_bytes: int = Field(128 * MiB, ge=0)
    input_cache_path: Path | None = Field(
        None,
        description="a SQLite file the worker processes share the cache in, so that any worker finds any "
        "prediction id; `python -m service` sets a new one in a folder of its own when WORKERS > 1. "
        "Unset: in this process's memory",
    )

    # activations, kernels and Grad-CAM
    max_activation_response_bytes: int = Field(
        64 * MiB, gt=0, description="largest activations/kernels/Grad-CAM answer; beyond it 413"
    )
    activation_probe_cache_size: int = Field(
        8, ge=0, description="compiled layer-set probes kept per model version besides the all-layer one"
    )
    warm_activation_probes: bool = Field(
        True, description="compile and run each version's all-layer probe and Grad-CAM at load, just after it is ready"
    )

    # inference runtime (service/runtimes.py)
    inference_runtime: Literal["auto", "openvino", "onnxruntime", "tensorflow"] = Field(
        "auto", description="auto: the fastest runtime that passes the parity gate; or force one"
    )
    inference_precision: Literal["f32", "bf16"] = Field(
        "f32", description="bf16: OpenVINO in bf16 where the CPU has it, if the gate agrees within 1e-2"
    )
    parity_tolerance: float = Field(1e-4, gt=0, description="largest |probability difference| the gate accepts")
    runtime_cache_dir: Path = Field(
        Path(tempfile.gettempdir()) / "keras-serve-cache",
        description="where versions without exported files are exported at load (never the store), and where "
        "`auto` decisions are kept with the Keras outputs they were gated against",
    )
    keras_wait_seconds: float = Field(
        60.0,
        gt=0,
        description="a version gated against known Keras outputs loads its Keras model after turning ready; "
        "requests that need its layers wait this long for it, then get 503",
    )
    openvino_performance_hint: Literal["latency", "throughput"] = Field("latency", description="OpenVINO CPU hint")
    runtime_timing_repeats: int = Field(3, gt=0, description="interleaved timed calls per runtime and batch size")

    # HTTP limits: the server enforces them before a request reaches the app (`service.server`),
    # except the body timeout, which the app enforces while it reads the body (`service.middleware`)
    max_header_bytes: int = Field(
        32 * 1024, gt=0, description="request line and headers; beyond it 431 and the connection is closed"
    )
    max_headers: int = Field(100, gt=0, description="header fields per request; beyond it 431")
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="time a client has to send a request's line and headers; then 408 and close"
    )
    body_timeout_seconds: float = Field(
        60.0, gt=0, description="time a client has to send a whole body once its headers are in; then 408 and close"
    )
    keep_alive_timeout_seconds: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int = Field(
        1000, gt=0, description="open connections per worker; beyond it a new connection gets 503 and is closed"
    )

    gc_freeze_after_load: bool = Field(
        True, description="move what is alive after each model load out of the garbage collector's way (gc.freeze)"
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_no_key(cls, value: object) -> object:
        # `API_KEY=` or `Settings(api_key="")`: no key, not a key that is the empty string
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    # isolation: inspection and large decodes cannot starve predictions
    inspection_threads: int = Field(
        1, gt=0, description="threads running activations, kernels and Grad-CAM (model calls and encoding)"
    )
    max_inspections_in_flight: int = Field(
        4,
        gt=0,
        description="activations/kernels/Grad-CAM requests and v2 layer outputs running or waiting; beyond it 503",
    )
    inspection_duty_cycle: float = Field(
        0.3, gt=0, le=1, description="share of wall time the inspection threads may work; they rest the rest"
    )
    max_image_aspect_ratio: float = Field(
        50.0, ge=1, description="longest image side over the shortest; beyond it 422 (before decoding)"
    )
    max_decode_bytes: int = Field(
        256 * MiB, gt=0, description="memory one image may take to decode (after JPEG draft scaling); beyond it 413"
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value
