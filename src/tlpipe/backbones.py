"""The backbone registry: name -> everything needed to use that backbone right.

Each entry names its ``keras.applications`` constructor, the preprocessing its
own ``preprocess_input`` does, its default and minimum input size, and its
five resolution stages, so that ``freeze: blockN`` means the same thing for
every backbone: stages 1..N-1 stay frozen, stage N and above are trained.

A stage is given by where it starts:

* ``"conv3"`` -- the first layer whose name is ``conv3`` or starts with
  ``conv3`` followed by a non-digit (``conv3_block1_1_conv``, not ``conv30``);
* ``"after:mixed7"`` -- right after the layer ``mixed7``;
* ``"pool:1"`` -- at the 2nd MaxPooling2D layer (for stems with unstable,
  auto-generated layer names);
* ``"start"`` -- the model's input.

The stage's *boundary* is the tensor entering that point. Freezing is decided
on the graph: every layer upstream of the boundary is frozen and every other
layer is trainable, so a shortcut convolution that Keras created just before
the stage's first named layer is still trained with its stage.

Keras is imported lazily: this module is imported by params validation.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from tlpipe.errors import TlpipeError, invalid

# What each application's own preprocess_input does, reproduced by
# tlpipe.layers.Preprocess inside the model graph (checked by a test):
#   caffe: RGB->BGR, subtract the ImageNet mean (VGG, ResNet v1)
#   tf:    scale to [-1, 1] (MobileNet V1/V2, ResNet v2, Xception, Inception)
#   torch: scale to [0, 1], normalise by ImageNet mean/std (DenseNet)
#   none:  the model takes 0..255 and normalises inside itself
PREPROCESS_MODES = ("caffe", "tf", "torch", "none")


def keras_weights_arg(weights: str) -> str | None:
    """The ``weights`` param as keras.applications takes it: 'imagenet', None or a file path."""
    if weights == "imagenet":
        return "imagenet"
    if weights == "none":
        return None
    if not Path(weights).is_file():
        raise invalid("weights", "'imagenet', 'none' or the path of an existing weights file", weights, "(no such file)")
    return weights


@dataclass(frozen=True)
class Backbone:
    name: str
    constructor: str  # attribute of keras.applications
    preprocess: str  # one of PREPROCESS_MODES
    default_size: int
    min_size: int
    stages: tuple[str, str, str, str, str]
    default_freeze: str = "block5"
    kwargs: dict = field(default_factory=dict)

    def build(self, image_size: int, weights: str = "imagenet", pooling: str | None = "avg"):
        """The backbone without its classifier top, global-average-pooled by default."""
        import keras

        constructor = getattr(keras.applications, self.constructor)
        keras_weights = keras_weights_arg(weights)
        try:
            return constructor(
                include_top=False,
                weights=keras_weights,
                input_shape=(image_size, image_size, 3),
                pooling=pooling,
                **self.kwargs,
            )
        except Exception as err:  # Keras raises ValueError/OSError/Exception alike
            if keras_weights == "imagenet" and "fetch failure" in str(err).lower():
                raise TlpipeError(
                    f"Could not download ImageNet weights for backbone '{self.name}': {err}. "
                    "Offline? Point KERAS_HOME at a Keras cache that holds them "
                    "(models/<file> inside it), or set 'weights' to a local file."
                ) from None
            if keras_weights not in ("imagenet", None):
                raise invalid(
                    "weights", f"a weights file of backbone '{self.name}' at image_size {image_size}",
                    weights, f"({err})".replace("\n", " "),
                ) from None
            raise


def weights_fingerprint(model) -> str:
    """SHA-256 over the model's weights: identifies exactly what was loaded."""
    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(w.path.encode())
        digest.update(w.numpy().tobytes())
    return digest.hexdigest()


# Where each family's five resolution stages start (see the module docstring).
FAMILY_STAGES = {
    "vgg": ("block1", "block2", "block3", "block4", "block5"),
    "resnet": ("conv1", "conv2", "conv3", "conv4", "conv5"),  # DenseNet names its stages alike
    "mobilenet": ("conv1", "conv_pad_2", "conv_pad_4", "conv_pad_6", "conv_pad_12"),
    "mobilenet_v2": ("Conv1", "block_1", "block_3", "block_6", "block_13"),
    "mobilenet_v3_small": ("conv", "expanded_conv", "expanded_conv_1", "expanded_conv_3", "expanded_conv_8"),
    "mobilenet_v3_large": ("conv", "expanded_conv_1", "expanded_conv_3", "expanded_conv_6", "expanded_conv_12"),
    "efficientnet": ("stem", "block2", "block3", "block4", "block6"),
    "xception": ("block1", "block2", "block3", "block4", "block13"),
    "inception_v3": ("start", "pool:0", "pool:1", "after:mixed2", "after:mixed7"),
    "inception_resnet_v2": ("start", "pool:0", "pool:1", "after:block35_10_ac", "after:block17_20_ac"),
    **{f"convnext_{size}": tuple(f"convnext_{size}_{where}" for where in (
        "stem", "stage_0", "downsampling_block_0", "downsampling_block_1", "downsampling_block_2"))
       for size in ("tiny", "small")},
}


def _entry(name: str, constructor: str, preprocess: str, family: str, default_size: int = 224, min_size: int = 32,
           **kwargs) -> Backbone:
    return Backbone(name=name, constructor=constructor, preprocess=preprocess, default_size=default_size,
                    min_size=min_size, stages=FAMILY_STAGES[family], kwargs=kwargs)


def _entries() -> list[Backbone]:
    out = [_entry("vgg16", "VGG16", "caffe", "vgg"), _entry("vgg19", "VGG19", "caffe", "vgg")]
    for depth in (50, 101, 152):
        out.append(_entry(f"resnet{depth}", f"ResNet{depth}", "caffe", "resnet"))
        out.append(_entry(f"resnet{depth}_v2", f"ResNet{depth}V2", "tf", "resnet"))
    # freeze: auto is block5, the registry default: chosen on val over cats vs
    # dogs and sign-language digits (bench/finetune_grid.py); for MobileNet block4
    # trained 6x longer on CPU and never beat the head on cats' val.
    for alpha in (0.25, 0.5, 0.75, 1.0):
        name = "mobilenet" if alpha == 1.0 else f"mobilenet_{alpha}"
        out.append(_entry(name, "MobileNet", "tf", "mobilenet", alpha=alpha))
    for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        name = "mobilenet_v2" if alpha == 1.0 else f"mobilenet_v2_{alpha}"
        out.append(_entry(name, "MobileNetV2", "tf", "mobilenet_v2", alpha=alpha))
    out += [_entry("mobilenet_v3_small", "MobileNetV3Small", "none", "mobilenet_v3_small"),
            _entry("mobilenet_v3_large", "MobileNetV3Large", "none", "mobilenet_v3_large")]
    for b, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        out.append(_entry(f"efficientnet_b{b}", f"EfficientNetB{b}", "none", "efficientnet", default_size=size))
    for b, size in enumerate((224, 240, 260, 300)):
        out.append(_entry(f"efficientnet_v2_b{b}", f"EfficientNetV2B{b}", "none", "efficientnet", default_size=size))
    out.append(_entry("efficientnet_v2_s", "EfficientNetV2S", "none", "efficientnet", default_size=384))
    for depth in (121, 169, 201):
        out.append(_entry(f"densenet{depth}", f"DenseNet{depth}", "torch", "resnet"))
    out += [_entry("xception", "Xception", "tf", "xception", default_size=299, min_size=71),
            _entry("inception_v3", "InceptionV3", "tf", "inception_v3", default_size=299, min_size=75),
            _entry("inception_resnet_v2", "InceptionResNetV2", "tf", "inception_resnet_v2", default_size=299,
                   min_size=75)]
    for size in ("tiny", "small"):
        out.append(_entry(f"convnext_{size}", f"ConvNeXt{size.capitalize()}", "none", f"convnext_{size}"))
    return out


REGISTRY: dict[str, Backbone] = {b.name: b for b in _entries()}


def names() -> list[str]:
    return list(REGISTRY)


def did_you_mean(name) -> str:
    """'Did you mean ...? Valid names: ...' for a name the registry lacks."""
    # only a string is compared: str() of a YAML alias bomb would not finish
    close = difflib.get_close_matches(name, names(), n=1, cutoff=0.5) if isinstance(name, str) else []
    return f"{f'Did you mean {close[0]!r}? ' if close else ''}Valid names: {', '.join(names())}."


def get(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        raise TlpipeError(f"Unknown backbone {name!r}. {did_you_mean(name)}") from None
