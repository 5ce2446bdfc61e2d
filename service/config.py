"""Every knob of the service, read from environment variables (e.g. `MODEL_DIR`, `API_KEY`).

Tests and embedding code build a `Settings(...)` directly; `python -m service` reads the
environment (and a `.env` file if present). Names are case-insensitive, no prefix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", protected_namespaces=())

    # where models come from
    model_dir: Path = Field(Path("models"), description="model store root: <dir>/<name>/<version>/")
    reload_interval_seconds: float = Field(5.0, ge=0, description="how often the store is polled; 0 disables")

    # network
    host: str = Field("127.0.0.1", description="default for `python -m service --host`")
    port: int = Field(8000, ge=0, le=65535, description="default for `python -m service --port`")
    api_key: SecretStr | None = Field(
        None, description="if set, every route but /health/live and the page files needs X-API-Key"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins, comma-separated; empty: CORS closed"
    )
    workers: int = Field(1, gt=0, description="uvicorn worker processes; each loads every model")
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
        1000, ge=0, description="how long a batch may wait for more requests (only while under load)"
    )
    max_queue_size: int = Field(512, gt=0, description="images waiting per model version before 503")
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After sent with 503 queue full")
    pad_batches: bool = Field(True, description="pad batches to power-of-two sizes warmed at load time")
    tf_intra_op_threads: int = Field(0, ge=0, description="TensorFlow intra-op threads; 0: TF default")
    tf_inter_op_threads: int = Field(0, ge=0, description="TensorFlow inter-op threads; 0: TF default")
    batch_workers: int = Field(1, gt=0, description="batches of one model version that may run at once")
    inference_threads: int = Field(
        1, gt=0, description="threads calling models; each call uses the TF pools (>= batch_workers)"
    )
    decode_threads: int = Field(2, gt=0, description="threads decoding large images")
    load_threads: int = Field(1, gt=0, description="threads loading and warming model versions")

    # recent prediction inputs, kept for the activations API
    input_cache_ttl_seconds: float = Field(900.0, gt=0)
    input_cache_max_bytes: int = Field(128 * MiB, ge=0)

    # activations, kernels and Grad-CAM
    max_activation_response_bytes: int = Field(
        64 * MiB, gt=0, description="largest activations/kernels/Grad-CAM answer; beyond it 413"
    )
    activation_probe_cache_size: int = Field(
        8, ge=0, description="compiled layer-set probes kept per model version besides the all-layer one"
    )
    warm_activation_probes: bool = Field(True, description="compile and run each version's all-layer probe at load")

    # isolation: inspection and large decodes cannot starve predictions
    inspection_threads: int = Field(
        1, gt=0, description="threads running activations, kernels and Grad-CAM (model calls and encoding)"
    )
    max_inspections_in_flight: int = Field(
        4, gt=0, description="activations/kernels/Grad-CAM requests running or waiting at once; beyond it 503"
    )
    inspection_duty_cycle: float = Field(
        0.5, gt=0, le=1, description="share of wall time the inspection threads may work; they rest the rest"
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
