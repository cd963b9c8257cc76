"""Each README recipe is one `dvc exp run -S ...` line whose params are valid and
whose model builds (random weights)."""

import copy
import re
import shlex

import keras
import pytest
import yaml

from tlpipe import backbones, freeze, params

from conftest import REPO

README = (REPO / "README.md").read_text()
SECTION = README.split("## Recipes", 1)[1].split("\n## ", 1)[0]
FIRST_BLOCK = SECTION.split("```sh", 1)[1].split("```", 1)[0]
LINES = [line for line in FIRST_BLOCK.splitlines() if line.startswith("dvc exp run")]


def overrides(line: str) -> dict:
    words = shlex.split(line)
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-S")


def test_six_recipes():
    assert len(LINES) == 6


@pytest.mark.parametrize("line", LINES, ids=[re.sub(r"\W+", "_", l[12:60]) for l in LINES])
def test_recipe_params_are_valid_and_the_model_builds(raw_params, line):
    raw = copy.deepcopy(raw_params)
    for key, value in overrides(line).items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        assert leaf in node, f"{key} is not a params key"
        node[leaf] = yaml.safe_load(value)  # as `dvc exp run -S` parses values
    raw["weights"] = "none"
    p = params.parse(raw)
    keras.backend.clear_session()
    spec = backbones.get(p.backbone)
    model = spec.build(p.image_size, p.weights)
    plan = freeze.plan(model, spec, p.freeze)
    freeze.apply(model, plan)
    trainable = [l for l in model.layers if l.trainable_weights]
    assert bool(trainable) == (p.freeze != "all")
