"""Each recipe of the docs (docs/experiments.md) is one `dvc exp run -S ...` line: DVC's own `-S` writer
applies it to params.yaml, tlpipe reads the file back valid, and the model
builds (random weights)."""

import re
import shlex

import keras
import pytest
import yaml

from tlpipe import backbones, freeze, params

from conftest import REPO

PAGE = (REPO / "docs" / "experiments.md").read_text()
SECTION = PAGE.split("## Recipes", 1)[1].split("\n## ", 1)[0]
FIRST_BLOCK = SECTION.split("```sh", 1)[1].split("```", 1)[0]
LINES = [line for line in FIRST_BLOCK.splitlines() if line.startswith("dvc exp run")]


def overrides(line: str) -> dict:
    words = shlex.split(line)
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-S")


def test_seven_recipes_three_through_catalogs():
    assert len(LINES) == 7
    sources = {overrides(line).get("data.source") for line in LINES}
    assert {"keras:cifar10", "tfds:stl10", "tfds:cats_vs_dogs"} <= sources


@pytest.mark.parametrize("line", LINES, ids=[re.sub(r"\W+", "_", l[12:60]) for l in LINES])
def test_recipe_params_are_valid_and_the_model_builds(tmp_path, line):
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` calls

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    settings = overrides(line)
    apply_overrides(path, [f"{k}={v}" for k, v in settings.items()])
    written = path.read_text()
    raw = params.read_yaml(path)
    for key, value in settings.items():
        node = raw
        for part in key.split("."):
            node = node[part]
        assert node == yaml.safe_load(value) or str(node) == value, (key, node, written)  # read as meant
    raw["weights"] = "none"
    p = params.parse(raw)
    keras.backend.clear_session()
    spec = backbones.get(p.backbone)
    model = spec.build(p.image_size, p.weights)
    plan = freeze.plan(model, spec, p.freeze)
    freeze.apply(model, plan)
    trainable = [l for l in model.layers if l.trainable_weights]
    assert bool(trainable) == (p.freeze != "all")
