"""The ``freeze`` word: its vocabulary, its checks, and what it does to a built backbone.

``blockN``: stages 1..N-1 frozen, stage N and above trained. ``all``: nothing
trained. ``none``: everything trained. ``auto``: the backbone's recommended
stage. Any other word is an exact Keras layer name: training starts there.
The word is checked twice, each time as early as it can be: its spelling and
blockN's range when params.yaml is read (``spelled_right``), a layer name on
the backbone's architecture in the params stage (``check_on_architecture``).

Frozen means *upstream of the boundary tensor* in the graph (see
``tlpipe.backbones``). BatchNormalization layers are never trainable: in Keras 3
a BN layer set trainable updates its moving statistics even when called with
``training=False`` by an outer model, and the small fine-tuning batches would
wreck statistics learned on ImageNet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tlpipe.backbones import Backbone
from tlpipe.errors import invalid

# Keras is imported inside the functions that build or walk a model: params
# validation reads this module's vocabulary before any stage needs Keras.
WORDS = ("auto", "all", "none")
_BLOCK = re.compile(r"block([0-9]+)")
_LAYER_NAME = re.compile(r"[A-Za-z0-9_./-]+")


def stage_number(word: str) -> int | None:
    """N for a ``blockN`` word, else None."""
    m = _BLOCK.fullmatch(word)
    return int(m.group(1)) if m else None


def rule(spec: Backbone) -> str:
    blocks = ", ".join(f"'block{i}'" for i in range(1, len(spec.stages) + 1))
    return f"'auto', 'all', 'none', one of {blocks}, or an exact Keras layer name of the backbone"


def is_layer_name(word: str) -> bool:
    return word not in WORDS and stage_number(word) is None


def spelled_right(word: str, spec: Backbone) -> bool:
    """auto/all/none, a blockN within ``spec``'s stages, or a word shaped like
    a layer name (whether the backbone has it: ``check_on_architecture``)."""
    stage = stage_number(word)
    if stage is not None:
        return 1 <= stage <= len(spec.stages)
    return word in WORDS or bool(_LAYER_NAME.fullmatch(word))


def check_layer(word: str, layer_names: list[str], spec: Backbone) -> None:
    """A layer-name word must name a layer of the backbone."""
    if word in layer_names:
        return
    example = layer_names[len(layer_names) // 2]
    raise invalid("freeze", rule(spec), word, f"(backbone '{spec.name}' has no such layer; e.g. {example!r})")


def check_on_architecture(word: str, spec: Backbone, image_size: int) -> None:
    """A layer-name word checked on ``spec``'s architecture (built without weights)."""
    if is_layer_name(word):
        check_layer(word, [layer.name for layer in spec.build(image_size, "none").layers], spec)


@dataclass
class Plan:
    """What a freeze word resolved to on one built backbone."""

    word: str
    boundary: object | None  # KerasTensor where training starts; None for all/none
    frozen: set[str]  # names of backbone layers that stay frozen (BN aside)

    @property
    def trains_nothing(self) -> bool:
        return self.word == "all"

    @property
    def has_prefix(self) -> bool:
        """Whether some layers stay frozen below trained ones (a prefix worth caching)."""
        return self.boundary is not None and not self.trains_nothing


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or (
        name.startswith(prefix) and not name[len(prefix)].isdigit()
    )


def stage_boundary(model, spec: Backbone, stage: int):
    """The tensor entering resolution stage ``stage`` (1-based) of ``model``."""
    import keras

    where = spec.stages[stage - 1]
    if where == "start":
        return model.inputs[0]
    if where.startswith("after:"):
        return model.get_layer(where[len("after:"):]).output
    if where.startswith("pool:"):
        pools = [l for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]
        return pools[int(where[len("pool:"):])].input
    for layer in model.layers:
        if _matches(layer.name, where):
            return layer.input
    raise LookupError(f"backbone '{spec.name}' has no layer for stage {stage} ({where!r})")


def upstream_layers(tensors) -> set[str]:
    """Names of every layer needed to compute ``tensors`` (inclusive)."""
    stack = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        layer, node_index, _ = tensor._keras_history
        if layer.name in seen:
            continue
        seen.add(layer.name)
        stack.extend(layer._inbound_nodes[node_index].input_tensors)
    return seen


def plan(model, spec: Backbone, word: str) -> Plan:
    """Resolve a freeze word against a built backbone (does not change it)."""
    if word == "auto":
        word = spec.default_freeze
    all_layers = {layer.name for layer in model.layers}
    if word == "all":
        return Plan(word, None, all_layers)
    if word == "none":
        return Plan(word, None, set())
    stage = stage_number(word)  # params validation has checked its range
    if stage is not None:
        boundary = stage_boundary(model, spec, stage)
    else:
        check_layer(word, [layer.name for layer in model.layers], spec)
        boundary = model.get_layer(word).input
    frozen = upstream_layers(boundary)
    return Plan(word, boundary, frozen)


def layers_above(backbone, p: Plan):
    """The backbone from ``p``'s boundary up: stored frozen-prefix outputs ->
    pooled features, through the very layers of ``backbone`` (training it
    trains them)."""
    import keras

    return keras.Model(p.boundary, backbone.output)


def apply(model, p: Plan) -> None:
    """Set ``trainable`` on every backbone layer; BatchNormalization always False."""
    import keras

    model.trainable = not p.trains_nothing
    for layer in model.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not (is_bn or layer.name in p.frozen)


def frozen_backbone(spec: Backbone, image_size: int, weights: str, word: str, pooling: str = "avg"):
    """Build the backbone ending in ``pooling``'s feature vector, resolve
    ``word`` on it and apply it: -> (backbone, plan).

    Built first thing after seeding in every stage that needs it, so a random
    init (``weights: none``) is the same everywhere.
    """
    from tlpipe.layers import grid_pooled

    if pooling == "grid":
        backbone = grid_pooled(spec.build(image_size, weights, pooling=None))
    else:
        backbone = spec.build(image_size, weights, pooling="avg")
    p = plan(backbone, spec, word)
    apply(backbone, p)
    return backbone, p
