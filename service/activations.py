"""Pure inference for looking inside a model: layer activations, conv kernels, Grad-CAM. No HTTP.

One `ActivationProbe` per loaded model version. At load time it builds one Keras model whose
outputs are every layer's output (the probe; it shares the classifier's layers and weights,
so it costs no memory for weights), and compiles and warms the function returning all of
them and the Grad-CAM function for the last convolution: the shapes most requests ask for.

A request for some layers is served by slicing the all-layer function's outputs until that
layer set has been asked for `COMPILE_AFTER` times; then a function returning only those
layers is compiled (TensorFlow prunes the ops their outputs do not depend on, so `conv1` of an
11-conv model costs the layers up to `conv1`). Compiling takes hundreds of milliseconds, tens
of all-layer runs (`bench/bench_activations.py`), so a one-off set never pays for it, and at
most `cache_size` sets are ever compiled per version: a client cycling `?layers=` cannot keep
TensorFlow tracing. Grad-CAM on any other layer uses one function (compiled on first use)
that weights every spatial layer in one backward pass. No Keras model is ever built on a
request, and `model.predict` is never called.

The input layer (`image`) counts as a layer: its activation is the input itself, the raw
pixels the model receives (before its own Rescaling), as float32. It is served without a
model call. Layers without a single output tensor (a layer applied twice) are not probed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from modelcard import InputSpec
from service.errors import UnknownLayer, UnsuitableLayer

log = logging.getLogger(__name__)

# Requests for one layer set before it gets a compiled function of its own.
COMPILE_AFTER = 3
# Layer sets whose requests are counted (a cycling client cannot grow the counts without bound).
_COUNTED_SETS = 256


@dataclass(frozen=True)
class ProbedLayer:
    """A layer whose output the probe can return.

    Attributes:
        name: the Keras layer name.
        type: its class name, e.g. "Conv2D".
        shape: output shape of one image (no batch axis); None where unknown until run.
    """

    name: str
    type: str
    shape: tuple[int | None, ...]

    @property
    def spatial(self) -> bool:
        """True for (height, width, channels) outputs: the ones a channel grid or Grad-CAM can use."""
        return len(self.shape) == 3

    @property
    def values(self) -> int:
        """float32 values per image (unknown dimensions count as 1)."""
        return math.prod(d or 1 for d in self.shape)


@dataclass(frozen=True)
class GradCam:
    """A Grad-CAM heatmap for one image.

    Attributes:
        layer: the layer whose feature maps were weighted.
        class_index: the class explained.
        probabilities: the model's output for the image.
        heatmap: (height, width) at the layer's resolution, scaled to [0, 1].
        peak: the heatmap's maximum before scaling (0: nothing in the layer speaks for the class).
    """

    layer: str
    class_index: int
    probabilities: np.ndarray
    heatmap: np.ndarray
    peak: float


def _is_softmax(activation: object) -> bool:
    return getattr(activation, "__name__", None) == "softmax"


class ActivationProbe:
    """Every layer's output of one model, on demand.

    Args:
        model: the loaded Keras functional model (single image input).
        spec: its input spec.
        max_batch_size: most images per model call; larger batches run in chunks.
        cache_size: layer-set functions compiled at most per version besides the all-layer
            one (never evicted, so never compiled twice); 0 serves every request from the
            all-layer function.
    """

    def __init__(self, model: keras.Model, spec: InputSpec, max_batch_size: int, cache_size: int) -> None:
        self.spec = spec
        self.max_batch_size = max_batch_size
        self.cache_size = cache_size
        self.layers: dict[str, ProbedLayer] = {}
        self._input_names: set[str] = set()
        self._index: dict[str, int] = {}  # position among the probe's outputs
        self._convolutions: list[str] = []
        outputs: list[Any] = []
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                self._input_names.add(layer.name)
                self.layers[layer.name] = ProbedLayer(layer.name, type(layer).__name__, tuple(spec.shape))
                continue
            try:
                output = layer.output
            except (AttributeError, ValueError):  # used more than once: no single output
                continue
            if not isinstance(output, keras.KerasTensor):
                continue  # several outputs (a nested multi-output model)
            self._index[layer.name] = len(outputs)
            outputs.append(output)
            self.layers[layer.name] = ProbedLayer(layer.name, type(layer).__name__, tuple(output.shape[1:]))
            if isinstance(layer, keras.layers.Conv2D):
                self._convolutions.append(layer.name)
        self._model = model
        self._probe = keras.Model(model.inputs, outputs, name=f"{model.name}_probe")
        self._signature = tf.TensorSpec((None, *spec.shape), tf.float32, name="image")
        self._output_name = self._output_layer(model)
        self._score = self._score_source()
        self._lock = threading.Lock()
        self._all = tuple(self._index)
        self._all_function = self._compile(self._all)
        self._functions: dict[tuple[str, ...], tf.types.experimental.ConcreteFunction] = {}
        self._requests: OrderedDict[tuple[str, ...], int] = OrderedDict()  # uncompiled sets asked for
        self._spatial_after_input = [
            name for name in self._index if self.layers[name].spatial and name not in self._input_names
        ]
        self._gradcam_default: tf.types.experimental.ConcreteFunction | None = None
        self._gradcam_any: tf.types.experimental.ConcreteFunction | None = None
        self.compilations = 1  # functions traced for this version, the all-layer one included

    # ------------------------------------------------------------------ layers

    @property
    def names(self) -> list[str]:
        """Every probed layer, in model order."""
        return list(self.layers)

    @property
    def convolutions(self) -> list[str]:
        """The Conv2D layers, in model order."""
        return list(self._convolutions)

    def spatial_names(self) -> list[str]:
        return [name for name, layer in self.layers.items() if layer.spatial]

    def select(self, names: Sequence[str] | None) -> list[str]:
        """`names` checked and without repeats (request order kept); None or empty: every layer.

        Raises:
            UnknownLayer: a name the model does not have (the message lists the valid ones).
        """
        if not names:
            return self.names
        unknown = [name for name in names if name not in self.layers]
        if unknown:
            raise UnknownLayer(f"unknown layer {unknown[0]!r}; this model's layers: {', '.join(self.names)}")
        return list(dict.fromkeys(names))

    def spatial_layer(self, name: str, purpose: str) -> ProbedLayer:
        """The layer `name`, which must have a (height, width, channels) output.

        Raises:
            UnknownLayer, UnsuitableLayer.
        """
        layer = self.layers[self.select([name])[0]]
        if not layer.spatial:
            raise UnsuitableLayer(
                f"layer {name!r} ({layer.type}, shape {list(layer.shape)}) has no height x width x channels "
                f"output to {purpose}; spatial layers: {', '.join(self.spatial_names())}"
            )
        return layer

    # ------------------------------------------------------------------ activations

    def _compile(self, names: tuple[str, ...]) -> tf.types.experimental.ConcreteFunction:
        positions = [self._index[name] for name in names]
        probe = self._probe

        def run(images: tf.Tensor) -> list[tf.Tensor]:
            outputs = probe(images, training=False)
            outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
            return [tf.cast(outputs[i], tf.float32) for i in positions]

        return tf.function(run, input_signature=[self._signature], autograph=False).get_concrete_function()

    def _function_for(self, names: tuple[str, ...]) -> tuple[tuple[str, ...], tf.types.experimental.ConcreteFunction]:
        """The function to run for a set of (non-input) layers, and the order of its outputs.

        Either the set's own compiled function, or the all-layer one (whose outputs the caller
        slices): a set gets its own after `COMPILE_AFTER` requests while fewer than `cache_size`
        sets have one.
        """
        key = tuple(sorted(names, key=self._index.__getitem__))  # "a,b" and "b,a" share one function
        if key == self._all or self.cache_size == 0:
            return self._all, self._all_function
        with self._lock:
            function = self._functions.get(key)
            if function is not None:
                return key, function
            if len(self._functions) >= self.cache_size:
                return self._all, self._all_function
            asked = self._requests.pop(key, 0) + 1
            if asked < COMPILE_AFTER:
                self._requests[key] = asked
                while len(self._requests) > _COUNTED_SETS:
                    self._requests.popitem(last=False)
                return self._all, self._all_function
            function = self._compile(key)  # traced once per popular layer set, under the lock
            self._functions[key] = function
            self.compilations += 1
            return key, function

    def warm(self) -> None:
        """Run the all-layer function, and compile and run Grad-CAM on the last convolution, so
        the requests most clients make find their functions traced and their kernels chosen."""
        zeros = tf.zeros((1, *self.spec.shape), tf.float32)
        self._all_function(zeros)
        if self._convolutions:
            self._gradcam_function(self.default_gradcam_layer())(zeros, tf.constant(-1, tf.int32))

    def __call__(self, images: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The outputs of layers `names` for a batch.

        Args:
            images: `(n, height, width, channels)` raw pixels as the model takes them, n >= 1.
            names: layer names, already checked with `select`.

        Returns:
            One float32 array per name, in `names` order, each `(n, *layer shape)`.
        """
        batch = np.asarray(images, dtype=np.float32)
        wanted = [name for name in names if name not in self._input_names]
        computed: dict[str, np.ndarray] = {}
        if wanted:
            order, function = self._function_for(tuple(wanted))
            asked = set(wanted)
            keep = [position for position, name in enumerate(order) if name in asked]
            chunks = []
            for start in range(0, len(batch), self.max_batch_size):
                outputs = function(tf.constant(batch[start : start + self.max_batch_size]))
                chunks.append([outputs[position].numpy() for position in keep])  # only what was asked for
            for column, position in enumerate(keep):
                parts = [chunk[column] for chunk in chunks]
                computed[order[position]] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return {name: batch if name in self._input_names else computed[name] for name in names}

    # ------------------------------------------------------------------ kernels

    def kernels(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """A Conv2D layer's weights: kernel `(kh, kw, in, out)` and bias `(out,)` (None without one).

        Raises:
            UnknownLayer, UnsuitableLayer: no such layer, or not a Conv2D.
        """
        self.select([name])
        if name not in self._convolutions:
            listed = ", ".join(self._convolutions) or "none"
            raise UnsuitableLayer(
                f"layer {name!r} is a {self.layers[name].type}, not a Conv2D; Conv2D layers: {listed}"
            )
        layer = self._model.get_layer(name)
        kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float32)
        bias = keras.ops.convert_to_numpy(layer.bias).astype(np.float32) if layer.use_bias else None
        return kernel, bias

    # ------------------------------------------------------------------ Grad-CAM

    def _output_layer(self, model: keras.Model) -> str:
        """The layer giving the model's output (the probabilities): usually, but not always, the last."""
        names = list(self._index)
        return next((n for n in names if self._model.get_layer(n).output is model.outputs[0]), names[-1])

    def _score_source(self) -> tuple[str, keras.layers.Layer | None] | None:
        """Where the class scores Grad-CAM differentiates come from.

        Grad-CAM wants the scores before the softmax (its gradient vanishes once a class is
        confidently predicted). When the output layer is a softmax Dense, or a softmax on its
        own, and its input is one of the probed layers, the logits are recomputed from that
        input; otherwise the output itself is used.
        """
        final = self._model.get_layer(self._output_name)
        try:
            source = final.input
        except (AttributeError, ValueError):
            return None
        producer = next((name for name in self._index if self._model.get_layer(name).output is source), None)
        if producer is None:
            return None
        if isinstance(final, keras.layers.Dense) and _is_softmax(final.activation):
            return producer, final
        if isinstance(final, keras.layers.Softmax) or (
            isinstance(final, keras.layers.Activation) and _is_softmax(final.activation)
        ):
            return producer, None
        return None

    def default_gradcam_layer(self) -> str:
        """The last Conv2D layer.

        Raises:
            UnsuitableLayer: the model has no Conv2D layer.
        """
        if not self._convolutions:
            spatial = [name for name in self.spatial_names() if name not in self._input_names]
            raise UnsuitableLayer(
                "this model has no Conv2D layer; name a spatial layer with ?layer= "
                f"({', '.join(spatial) or 'there is none'})"
            )
        return self._convolutions[-1]

    def _gradcam_function(self, name: str) -> tf.types.experimental.ConcreteFunction:
        """The default layer's own function, or the one weighting every spatial layer at once
        (its outputs then hold one heatmap per layer): at most two Grad-CAM functions per version."""
        default = self._convolutions[-1] if self._convolutions else None
        with self._lock:
            if name == default:
                if self._gradcam_default is None:
                    self._gradcam_default = self._compile_gradcam([name])
                    self.compilations += 1
                return self._gradcam_default
            if self._gradcam_any is None:
                self._gradcam_any = self._compile_gradcam(self._spatial_after_input)
                self.compilations += 1
            return self._gradcam_any

    def _compile_gradcam(self, names: list[str]) -> tf.types.experimental.ConcreteFunction:
        probe, final_position = self._probe, self._index[self._output_name]
        targets = [self._index[name] for name in names]
        score = self._score
        logits_position = self._index[score[0]] if score else None
        dense = score[1] if score else None

        def run(image: tf.Tensor, class_index: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                outputs = probe(image, training=False)
                features = [tf.cast(outputs[target], tf.float32) for target in targets]
                probabilities = tf.cast(outputs[final_position], tf.float32)
                chosen = tf.where(class_index < 0, tf.argmax(probabilities[0], output_type=tf.int32), class_index)
                if logits_position is None:
                    scores = probabilities
                elif dense is None:
                    scores = tf.cast(outputs[logits_position], tf.float32)
                else:
                    scores = tf.matmul(tf.cast(outputs[logits_position], tf.float32), dense.kernel) + dense.bias
                score_of_class = scores[0, chosen]
            heatmaps = []
            for feature, gradient in zip(features, tape.gradient(score_of_class, features), strict=True):
                if gradient is None:  # the class score does not depend on this layer
                    gradient = tf.zeros_like(feature)
                weights = tf.reduce_mean(gradient, axis=(1, 2), keepdims=True)  # one per feature map
                heatmaps.append(tf.nn.relu(tf.reduce_sum(feature * weights, axis=-1))[0])
            return heatmaps, probabilities[0], chosen

        signature = [self._signature, tf.TensorSpec((), tf.int32, name="class_index")]
        return tf.function(run, input_signature=signature, autograph=False).get_concrete_function()

    def gradcam(self, image: np.ndarray, layer: str | None = None, class_index: int | None = None) -> GradCam:
        """Grad-CAM (Selvaraju et al.) for one image.

        Args:
            image: `(height, width, channels)` raw pixels.
            layer: a spatial layer after the input; default: the last Conv2D.
            class_index: the class to explain; default: the predicted one.

        Returns:
            A `GradCam`.

        Raises:
            UnknownLayer, UnsuitableLayer: no such layer, or one without feature maps to weight.
        """
        name = layer or self.default_gradcam_layer()
        self.spatial_layer(name, "weight for Grad-CAM")
        if name in self._input_names:
            later = [n for n in self.spatial_names() if n not in self._input_names]
            raise UnsuitableLayer(f"Grad-CAM needs a layer after the input; spatial layers: {', '.join(later)}")
        function = self._gradcam_function(name)
        batch = tf.constant(np.asarray(image, np.float32)[None])
        chosen = tf.constant(-1 if class_index is None else class_index, tf.int32)
        heatmaps, probabilities, index = function(batch, chosen)
        position = 0 if len(heatmaps) == 1 else self._spatial_after_input.index(name)
        heatmap = heatmaps[position].numpy()
        peak = float(heatmap.max()) if heatmap.size else 0.0
        scaled = heatmap / peak if peak > 0 else np.zeros_like(heatmap)
        return GradCam(name, int(index.numpy()), probabilities.numpy(), scaled.astype(np.float32), peak)
