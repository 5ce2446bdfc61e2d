"""Pure inference: a loaded Keras model behind one compiled function; a batch in, probabilities out.

Nothing here knows about HTTP or asyncio. `model.predict` is never used on the request path:
it sets up a data pipeline per call (tens of milliseconds) for a model that runs in well under
one. Instead each loaded version gets one `tf.function` with a fixed input signature (batch
dimension unknown, so it is traced exactly once) and is called once per batch.

TensorFlow and Keras are imported where they are first needed, not with this module: a version
served from a cached runtime decision starts answering predictions before they are imported
(`service.registry`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from modelcard import InputSpec

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

_threads_lock = threading.Lock()
_threads_configured: tuple[int, int] | None = None


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> bool:
    """Size TensorFlow's thread pools; must run before the first TF op of the process.

    Only the first call in a process can take effect (TF refuses later changes); later calls
    with different numbers are logged and ignored, which is what tests building many apps need.

    Args:
        intra_op: threads inside one op (0: TensorFlow's default, one per core).
        inter_op: ops run in parallel (0: TensorFlow's default).

    Returns:
        True if these numbers are now in force.
    """
    global _threads_configured
    import tensorflow as tf

    with _threads_lock:
        if _threads_configured is not None:
            if _threads_configured != (intra_op, inter_op):
                log.warning(
                    "TensorFlow threads already set to %s; ignoring %s", _threads_configured, (intra_op, inter_op)
                )
            return _threads_configured == (intra_op, inter_op)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        except RuntimeError:
            log.warning("TensorFlow already initialised; thread settings %s not applied", (intra_op, inter_op))
            _threads_configured = (-1, -1)
            return False
        _threads_configured = (intra_op, inter_op)
        return True


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    output_shape: list[int | None]
    parameters: int


def describe_layers(model: keras.Model) -> list[LayerInfo]:
    """Each layer's name, class and output shape (batch dimension first, None)."""
    described = []
    for layer in model.layers:
        try:
            shape = list(layer.output.shape)
        except (AttributeError, ValueError):  # a layer used more than once has no single output
            shape = []
        described.append(LayerInfo(layer.name, type(layer).__name__, shape, int(layer.count_params())))
    return described


def top_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Each row's `k` most probable class indices, best first; ties in class order (every
    answer that ranks classes, `/predict`'s `top_k` and v2's classification, ranks alike)."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def batch_buckets(max_batch_size: int) -> list[int]:
    """Powers of two up to `max_batch_size`, and `max_batch_size` itself."""
    sizes, n = [], 1
    while n < max_batch_size:
        sizes.append(n)
        n *= 2
    sizes.append(max_batch_size)
    return sizes


class BatchRuntime:
    """A model behind one call: a batch of raw pixels (float32, 0..255) in, probabilities out.

    The shared part of every runtime: batch-size checks and padding each batch up to a bucket
    size warmed at load, so the kernels a runtime picks per shape are all chosen before the
    first live request. Subclasses implement `_run` on a padded float32 batch.

    Args:
        spec: the model's input spec, from its card.
        num_classes: expected width of the output.
        max_batch_size: largest batch `__call__` accepts.
        pad_batches: pad each batch up to a bucket size (`batch_buckets`).
    """

    name = "base"
    precision = "f32"

    def __init__(self, spec: InputSpec, num_classes: int, max_batch_size: int, pad_batches: bool = False) -> None:
        self.spec = spec
        self.num_classes = num_classes
        self.max_batch_size = max_batch_size
        self.buckets = batch_buckets(max_batch_size) if pad_batches else []
        self.calls = 0  # model calls made; tests use it to see batching happen

    @property
    def warm_sizes(self) -> list[int]:
        """The batch sizes this runtime is called with after padding (all of them when unpadded: 1 and max)."""
        return self.buckets or sorted({1, self.max_batch_size})

    def warm(self) -> None:
        """Run every bucket size once (or sizes 1 and max without buckets)."""
        for size in self.warm_sizes:
            self._run(np.zeros((size, *self.spec.shape), np.float32))
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch.

        Args:
            batch: `(n, height, width, channels)` raw pixels, any real dtype; 1 <= n <= max_batch_size.

        Returns:
            `(n, num_classes)` float32 probabilities, rows in batch order.
        """
        n = len(batch)
        if not 1 <= n <= self.max_batch_size:
            raise ValueError(f"batch of {n}; expected 1..{self.max_batch_size}")
        size = next((b for b in self.buckets if b >= n), n)
        if size == n:
            padded = np.asarray(batch, dtype=np.float32)
        else:
            padded = np.zeros((size, *self.spec.shape), np.float32)
            padded[:n] = batch
        self.calls += 1
        return self._run(padded)[:n]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Classifier(BatchRuntime):
    """The compiled TensorFlow call of a Keras model: the reference every other runtime is checked against.

    Args:
        model: a Keras model taking `(batch, *spec.shape)` float32 and returning probabilities.
        spec, num_classes, max_batch_size, pad_batches: as for `BatchRuntime`.
    """

    name = "tensorflow"

    def __init__(
        self, model: keras.Model, spec: InputSpec, num_classes: int, max_batch_size: int, pad_batches: bool = False
    ) -> None:
        super().__init__(spec, num_classes, max_batch_size, pad_batches)
        import tensorflow as tf

        self.model = model
        self._constant = tf.constant
        self._check_shapes()
        signature = tf.TensorSpec((None, *spec.shape), tf.float32, name="image")
        serve = tf.function(lambda x: model(x, training=False), input_signature=[signature], autograph=False)
        self._function = serve.get_concrete_function()

    def _check_shapes(self) -> None:
        inputs = self.model.inputs
        if len(inputs) != 1 or tuple(inputs[0].shape[1:]) != self.spec.shape:
            got = [tuple(t.shape) for t in inputs]
            raise ValueError(f"model input {got} does not match the card's input shape {self.spec.shape}")
        outputs = self.model.outputs
        if len(outputs) != 1 or tuple(outputs[0].shape[1:]) != (self.num_classes,):
            got = [tuple(t.shape) for t in outputs]
            raise ValueError(f"model output {got} does not match the card's {self.num_classes} classes")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._function(self._constant(batch)).numpy()
