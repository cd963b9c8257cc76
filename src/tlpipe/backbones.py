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

from tlpipe.errors import TlpipeError

# What each application's own preprocess_input does, reproduced by
# tlpipe.layers.Preprocess inside the model graph (checked by a test):
#   caffe: RGB->BGR, subtract the ImageNet mean (VGG, ResNet v1)
#   tf:    scale to [-1, 1] (MobileNet V1/V2, ResNet v2, Xception, Inception)
#   torch: scale to [0, 1], normalise by ImageNet mean/std (DenseNet)
#   none:  the model takes 0..255 and normalises inside itself
PREPROCESS_MODES = ("caffe", "tf", "torch", "none")


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

        from tlpipe.params import check_weights, invalid

        constructor = getattr(keras.applications, self.constructor)
        keras_weights = check_weights(weights)
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


def _entries() -> list[Backbone]:
    vgg = ("block1", "block2", "block3", "block4", "block5")
    resnet = ("conv1", "conv2", "conv3", "conv4", "conv5")
    efficientnet = ("stem", "block2", "block3", "block4", "block6")
    out = [
        Backbone("vgg16", "VGG16", "caffe", 224, 32, vgg),
        Backbone("vgg19", "VGG19", "caffe", 224, 32, vgg),
    ]
    for depth in (50, 101, 152):
        out.append(Backbone(f"resnet{depth}", f"ResNet{depth}", "caffe", 224, 32, resnet))
        out.append(Backbone(f"resnet{depth}_v2", f"ResNet{depth}V2", "tf", 224, 32, resnet))
    mobilenet = ("conv1", "conv_pad_2", "conv_pad_4", "conv_pad_6", "conv_pad_12")
    for alpha in (0.25, 0.5, 0.75, 1.0):
        name = "mobilenet" if alpha == 1.0 else f"mobilenet_{alpha}"
        # freeze: auto is block5, the registry default: chosen on val over cats
        # vs dogs and sign-language digits (bench/RESULTS.md); block4 trained 6x
        # longer on CPU and never beat the head on val.
        out.append(Backbone(name, "MobileNet", "tf", 224, 32, mobilenet, kwargs={"alpha": alpha}))
    mobilenet_v2 = ("Conv1", "block_1", "block_3", "block_6", "block_13")
    for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        name = "mobilenet_v2" if alpha == 1.0 else f"mobilenet_v2_{alpha}"
        out.append(
            Backbone(name, "MobileNetV2", "tf", 224, 32, mobilenet_v2, kwargs={"alpha": alpha})
        )
    out += [
        Backbone(
            "mobilenet_v3_small",
            "MobileNetV3Small",
            "none",
            224,
            32,
            ("conv", "expanded_conv", "expanded_conv_1", "expanded_conv_3", "expanded_conv_8"),
        ),
        Backbone(
            "mobilenet_v3_large",
            "MobileNetV3Large",
            "none",
            224,
            32,
            ("conv", "expanded_conv_1", "expanded_conv_3", "expanded_conv_6", "expanded_conv_12"),
        ),
    ]
    for b, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        out.append(Backbone(f"efficientnet_b{b}", f"EfficientNetB{b}", "none", size, 32, efficientnet))
    for b, size in enumerate((224, 240, 260, 300)):
        out.append(
            Backbone(f"efficientnet_v2_b{b}", f"EfficientNetV2B{b}", "none", size, 32, efficientnet)
        )
    out.append(Backbone("efficientnet_v2_s", "EfficientNetV2S", "none", 384, 32, efficientnet))
    for depth in (121, 169, 201):
        out.append(Backbone(f"densenet{depth}", f"DenseNet{depth}", "torch", 224, 32, resnet))
    out += [
        Backbone(
            "xception",
            "Xception",
            "tf",
            299,
            71,
            ("block1", "block2", "block3", "block4", "block13"),
        ),
        Backbone(
            "inception_v3",
            "InceptionV3",
            "tf",
            299,
            75,
            ("start", "pool:0", "pool:1", "after:mixed2", "after:mixed7"),
        ),
        Backbone(
            "inception_resnet_v2",
            "InceptionResNetV2",
            "tf",
            299,
            75,
            ("start", "pool:0", "pool:1", "after:block35_10_ac", "after:block17_20_ac"),
        ),
    ]
    for size in ("tiny", "small"):
        p = f"convnext_{size}_"
        out.append(
            Backbone(
                f"convnext_{size}",
                f"ConvNeXt{size.capitalize()}",
                "none",
                224,
                32,
                (
                    p + "stem",
                    p + "stage_0",
                    p + "downsampling_block_0",
                    p + "downsampling_block_1",
                    p + "downsampling_block_2",
                ),
            )
        )
    return out


REGISTRY: dict[str, Backbone] = {b.name: b for b in _entries()}


def names() -> list[str]:
    return list(REGISTRY)


def did_you_mean(name) -> str:
    """'Did you mean ...? Valid names: ...' for a name the registry lacks."""
    close = difflib.get_close_matches(str(name), names(), n=1, cutoff=0.5)
    return f"{f'Did you mean {close[0]!r}? ' if close else ''}Valid names: {', '.join(names())}."


def get(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        raise TlpipeError(f"Unknown backbone {name!r}. {did_you_mean(name)}") from None
