"""Keras layers that tlpipe models contain. Importing this module registers them,
so ``keras.saving.load_model`` can read tlpipe's ``.keras`` files.

``Preprocess`` puts a backbone's own ``preprocess_input`` inside the model
graph: saved models take plain RGB pixels in 0..255, and training, evaluation,
export and predict cannot disagree about preprocessing.
"""

from __future__ import annotations

import keras
from keras import ops

from tlpipe.backbones import PREPROCESS_MODES

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tlpipe")
class Preprocess(keras.layers.Layer):
    """Pixels in 0..255 (RGB) -> what the backbone was trained on."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"Preprocess mode must be one of {PREPROCESS_MODES}, got {mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - ops.array(_TORCH_MEAN, x.dtype)) / ops.array(_TORCH_STD, x.dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.array(_CAFFE_BGR_MEAN, x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def load_model(path):
    """Load a tlpipe ``.keras`` file (custom layers registered by this import)."""
    return keras.saving.load_model(path)


@keras.saving.register_keras_serializable(package="tlpipe")
class RandomResizedCrop(keras.layers.Layer):
    """Crop a random box (``min_area``..1 of the image, aspect 3/4..4/3) and
    resize it back to the input size; the identity at inference.

    Keras 3 has no such layer; this is the Inception-style crop that fastai and
    torchvision use by default.
    """

    def __init__(self, min_area: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.min_area = min_area
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        import tensorflow as tf

        n = ops.shape(images)[0]
        size = ops.shape(images)[1:3]
        area = keras.random.uniform((n,), self.min_area, 1.0, seed=self.seed_generator)
        log_ratio = keras.random.uniform((n,), -0.2877, 0.2877, seed=self.seed_generator)  # ln(4/3)
        ratio = ops.exp(log_ratio)
        height = ops.minimum(1.0, ops.sqrt(area / ratio))
        width = ops.minimum(1.0, ops.sqrt(area * ratio))
        top = keras.random.uniform((n,), seed=self.seed_generator) * (1.0 - height)
        left = keras.random.uniform((n,), seed=self.seed_generator) * (1.0 - width)
        boxes = ops.stack([top, left, top + height, left + width], axis=1)
        crops = tf.image.crop_and_resize(
            ops.cast(images, "float32"), boxes, tf.range(n), size
        )
        return ops.cast(crops, images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_area": self.min_area, "seed": self.seed}


def augmentation(augment, seed: int) -> list:
    """The augmentation layers switched on in ``finetune.augment`` (random only
    while training: Keras runs them as the identity at inference)."""
    layers = []
    if augment.crop:
        layers.append(RandomResizedCrop(augment.crop, seed=seed, name="aug_crop"))
    if augment.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip"))
    if augment.rotation:
        layers.append(keras.layers.RandomRotation(augment.rotation, seed=seed, name="aug_rotation"))
    if augment.zoom:
        layers.append(keras.layers.RandomZoom(augment.zoom, seed=seed, name="aug_zoom"))
    if augment.translation:
        t = augment.translation
        layers.append(keras.layers.RandomTranslation(t, t, seed=seed, name="aug_translation"))
    if augment.contrast:
        # value_range: our pixels are 0..255 (Keras 3 assumes 0..255 by default too).
        layers.append(
            keras.layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed, name="aug_contrast")
        )
    return layers


def on_pixels(spec, image_size: int, body, augment_layers=(), preprocess_name: str = "preprocess"):
    """pixels (0..255) -> augmentation -> the backbone's own preprocessing -> ``body``.

    The one place a tlpipe model meets raw pixels (extract's feature model,
    the fine-tuned classifier, its frozen-prefix encoder). ``body`` is called
    with ``training=False``: layers that behave differently in training
    (dropout inside some backbones) keep inference behaviour, as in the
    frozen-feature phase. Returns (pixels input, body output).
    """
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    x = pixels
    for layer in augment_layers:
        x = layer(x)
    x = Preprocess(spec.preprocess, name=preprocess_name)(x)
    return pixels, body(x, training=False)


@keras.saving.register_keras_serializable(package="tlpipe")
class Temperature(keras.layers.Layer):
    """Calibrated probabilities: softmax(log p / T), with T fitted on val by the
    finetune stage; the model's decisions are unchanged. Multi-label
    (``thresholds`` given): sigmoid(logit p / T) per label, and each label's
    decision threshold, chosen on val, kept in the model's config so that
    whatever reads the model reads its decisions too."""

    def __init__(self, temperature: float, thresholds=None, **kwargs):
        super().__init__(dtype="float32", **{k: v for k, v in kwargs.items() if k != "dtype"})
        self.temperature = float(temperature)
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]

    def call(self, probs):
        probs = ops.cast(probs, "float32")
        if self.thresholds is not None:
            p = ops.clip(probs, 1e-7, 1.0 - 1e-7)
            return ops.sigmoid((ops.log(p) - ops.log(1.0 - p)) / self.temperature)
        logits = ops.log(ops.clip(probs, 1e-12, 1.0)) / self.temperature
        return ops.softmax(logits, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "temperature": self.temperature}
        if self.thresholds is not None:  # single-label models' files stay as they were
            config["thresholds"] = self.thresholds
        return config


@keras.saving.register_keras_serializable(package="tlpipe")
class Mirror(keras.layers.Layer):
    """The image flipped left to right (NHWC), always: test-time augmentation,
    unlike RandomFlip, which is off at inference."""

    def call(self, images):
        return ops.flip(images, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tlpipe")
class GridPooling(keras.layers.Layer):
    """A feature map (NHWC) -> its average over the whole map, then over each
    quadrant (top left, top right, bottom left, bottom right), concatenated:
    where in the picture a feature fires, which the global average alone
    loses (``pooling: grid``). An odd side's middle row or column belongs to
    both halves, so a mirror image's quadrants are the mirrored quadrants."""

    PARTS = 5  # the average first, then the quadrants'

    def call(self, maps):
        height, width = maps.shape[1], maps.shape[2]
        rows = (slice(0, (height + 1) // 2), slice(height // 2, height))
        columns = (slice(0, (width + 1) // 2), slice(width // 2, width))
        quadrants = [ops.mean(maps[:, r, c, :], axis=(1, 2)) for r in rows for c in columns]
        return ops.concatenate([ops.mean(maps, axis=(1, 2)), *quadrants], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.PARTS * input_shape[-1])


def grid_pooled(maps: keras.Model) -> keras.Model:
    """A backbone that ends in its last feature map -> the same layers ending
    in GridPooling's vector (``pooling: grid``)."""
    return keras.Model(maps.input, GridPooling(name="grid_pool")(maps.output), name=maps.name)


def mirror_averaged(model: keras.Model) -> keras.Model:
    """``model``'s probabilities averaged over the image and its mirror image:
    one shared set of weights, saved once; what ships when mirror-image
    test-time augmentation is on (finetune.tta)."""
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    both = [model(pixels), model(Mirror(name="mirror")(pixels))]
    return keras.Model(pixels, keras.layers.Average(name="mirror_average", dtype="float32")(both), name=model.name)


def temperature_of(model) -> float:
    """The temperature a tlpipe model applies to its probabilities (1.0: none)."""
    last = model.layers[-1]
    return last.temperature if isinstance(last, Temperature) else 1.0


def thresholds_of(model) -> list[float] | None:
    """A multi-label tlpipe model's per-label decision thresholds (None: one label per image)."""
    last = model.layers[-1]
    return last.thresholds if isinstance(last, Temperature) else None


def as_float32(model):
    """A float32 copy of a model trained under mixed precision, same weights
    (kept in float32 anyway): what ships, so that every consumer (CPU,
    TFLite, tlpipe predict) reads plain float32."""

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and node.get("config", {}).get("name") == "mixed_float16":
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    keras.mixed_precision.set_global_policy("float32")
    copy = keras.saving.deserialize_keras_object(walk(keras.saving.serialize_keras_object(model)))
    copy.set_weights(model.get_weights())
    return copy


def _mirrored_classifier(model: keras.Model) -> keras.Model | None:
    """The classifier a mirror-averaged model averages over, or None."""
    return next((layer for layer in model.layers
                 if isinstance(layer, keras.Model) and any(x.name == "head" for x in layer.layers)), None)


def with_features(model: keras.Model) -> keras.Model:
    """A view of a tlpipe classifier that gives (probabilities, the pooled
    features its head reads, their ``compared_columns``) in one forward pass,
    with the same weights: what the unfamiliar-input score needs beside the
    prediction. With mirror-image TTA the features are the plain image's."""
    inner = _mirrored_classifier(model)
    if inner is None:
        return _chain_with_features(model)
    both = _chain_with_features(inner)
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    probs, features = both(pixels)
    mirror_probs, _ = both(Mirror(name="mirror")(pixels))
    averaged = keras.layers.Average(name="mirror_average", dtype="float32")([probs, mirror_probs])
    calibrated = Temperature(temperature_of(model), thresholds_of(model), name="temperature")(averaged)
    return keras.Model(pixels, [calibrated, features])


def on_mirror_images(model: keras.Model) -> keras.Model:
    """pixels -> the probabilities a mirror-averaged ``model`` averages in from
    the mirror image (before its temperature): the half of its work that
    data/prefix does not store for test."""
    inner = _mirrored_classifier(model)
    if inner is None:
        raise ValueError(f"{model.name} does not average over the mirror image")
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    return keras.Model(pixels, inner(Mirror(name="mirror")(pixels)))


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone inside a tlpipe classifier (mirror-averaged or not): the layer the head reads."""
    chain = _mirrored_classifier(model) or model
    names = [layer.name for layer in chain.layers]
    if "head" not in names:
        raise ValueError(f"{model.name} has no layer named 'head': not a tlpipe classifier")
    return chain.layers[names.index("head") - 1]


def head_of(model: keras.Model) -> keras.layers.Layer:
    """The head inside a tlpipe classifier (mirror-averaged or not): pooled features -> probabilities."""
    return (_mirrored_classifier(model) or model).get_layer("head")


def features_of(model: keras.Model) -> keras.Model:
    """pixels -> the pooled features ``model``'s head reads, on the plain image
    alone (the features ``with_features`` gives, without the mirror image's
    forward pass that only its probabilities need)."""
    both = _chain_with_features(_mirrored_classifier(model) or model)
    return keras.Model(both.input, both.outputs[1])


def compared_columns(backbone: keras.Model) -> int:
    """How many leading columns of ``backbone``'s pooled features the
    unfamiliar score compares: all, or with grid pooling the global
    average's (the first fifth), alike for an object wherever it sits."""
    dim = int(backbone.output.shape[-1])
    return dim // GridPooling.PARTS if isinstance(backbone.layers[-1], GridPooling) else dim


def _chain_with_features(model: keras.Model) -> keras.Model:
    # tlpipe classifiers are chains: pixels, [augmentation], preprocess, backbone, head, [temperature].
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    x, features, backbone = pixels, None, None
    for layer in model.layers[1:]:
        if layer.name == "head":
            features = x[:, : compared_columns(backbone)]
        x, backbone = layer(x), layer
    if features is None:
        raise ValueError(f"{model.name} has no layer named 'head': not a tlpipe classifier")
    return keras.Model(pixels, [x, features])
