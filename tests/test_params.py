"""params.yaml validation: one clear line naming the key, the rule and the value."""

import copy

import pytest
import yaml

from tlpipe import params
from tlpipe.errors import TlpipeError

from conftest import REPO


def parse(raw):
    return params.parse(raw, "params.yaml")


def with_change(raw, dotted, value):
    raw = copy.deepcopy(raw)
    *parents, key = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[key] = value
    return raw


def error_of(raw) -> str:
    with pytest.raises(TlpipeError) as info:
        parse(raw)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_repo_params_are_valid(raw_params):
    p = parse(raw_params)
    assert p.backbone == "mobilenet_0.75" and p.image_size == 224
    assert p.head.hidden == () and p.finetune.augment.any is False
    assert p.head.l2 is None  # auto: chosen on val
    assert parse(with_change(raw_params, "head.l2", 0.001)).head.l2 == 0.001


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("head.dropout", 1.5, "The 'head.dropout' parameter must be a float in the range [0.0, 1.0). Got 1.5"),
        ("head.dropout", "high", "'head.dropout' parameter must be a float"),
        ("head.epochs", 0, "'head.epochs' parameter must be an int in the range [1, 100000]. Got 0"),
        ("head.epochs", 2.5, "'head.epochs' parameter must be an int"),
        ("head.epochs", True, "'head.epochs' parameter must be an int"),
        ("head.hidden", [64, -1], "'head.hidden' parameter must be a list of layer widths"),
        ("head.batchnorm", "yes", "'head.batchnorm' parameter must be a bool"),
        ("head.optimizer", "adagrad", "one of 'adam', 'adamw', 'sgd', 'rmsprop'. Got 'adagrad'"),
        ("head.class_weight", "balanced", "'head.class_weight' parameter must be one of 'auto', 'none'"),
        ("head.solver", "newton", "The 'head.solver' parameter must be one of 'keras', 'lbfgs'. Got 'newton'"),
        ("head.l2", -0.1, "The 'head.l2' parameter must be 'auto' or a float >= 0.0. Got -0.1 instead."),
        ("head.l2", "strong", "The 'head.l2' parameter must be 'auto' or a float >= 0.0. Got 'strong' instead."),
        ("finetune.learning_rate", 0, "'finetune.learning_rate' parameter must be a float in the range (0.0, 10.0)"),
        ("finetune.schedule", "step", "'finetune.schedule' parameter must be one of 'constant', 'cosine', 'plateau'"),
        ("finetune.augment.rotation", 0.9, "'finetune.augment.rotation' parameter must be a float in the range [0.0, 0.5]"),
        ("finetune.augment.flip", 1, "'finetune.augment.flip' parameter must be a bool"),
        ("finetune.mixed_precision", "maybe", "'finetune.mixed_precision' parameter must be 'auto', true or false"),
        ("finetune.xla", "on", "'finetune.xla' parameter must be a bool"),
        ("finetune.tta", "mirror", "'finetune.tta' parameter must be 'auto', true or false"),
        ("evaluate.top_k", 1, "'evaluate.top_k' parameter must be an int in the range [2, 100]"),
        ("split.test_from_val", 1.0, "'split.test_from_val' parameter must be a float in the range (0.0, 1.0)"),
        ("seed", -1, "'seed' parameter must be an int in the range [0, 2147483647]"),
        ("data.sha256", "abc", "'data.sha256' parameter must be null or a 64-digit hex SHA-256"),
        ("data.source", "", "'data.source' parameter must be a non-empty string"),
        ("freeze", "block 5", "'freeze' parameter must be 'auto', 'all', 'none', one of 'block1', "),
        # wrong for every backbone: rejected when params are read, before any stage works
        ("freeze", "block0", "'block5', or an exact Keras layer name of the backbone. Got 'block0'"),
        ("freeze", "block6", "'block5', or an exact Keras layer name of the backbone. Got 'block6'"),
        ("data.source", "https://example.com/data.html", "'data.source' parameter must be an http(s) URL of an archive"),
        ("finetune.learning_rate", "3e-05", "'finetune.learning_rate' parameter must be a float"),
        ("image_size", 16, "'image_size' parameter must be an int in the range [32, 1024]. Got 16"),
        ("head", [1, 2], "The 'head' section must be a mapping"),
        ("export.formats", "onnx", "The 'export.formats' parameter must be a list of distinct formats among "
                                   "saved_model, tflite, tflite_float16, tflite_int8, onnx ([] exports nothing). "
                                   "Got 'onnx' instead."),
        ("export.formats", ["onnx", "onnx"], "'export.formats' parameter must be a list of distinct formats"),
        ("export.formats", ["tflite_int4"], "Got ['tflite_int4'] instead."),
        ("audit.near_duplicate_similarity", 0, "The 'audit.near_duplicate_similarity' parameter must be 'auto' or a "
                                               "float in the range (0.0, 1.0]. Got 0 instead."),
        ("audit.near_duplicate_similarity", "high", "'audit.near_duplicate_similarity' parameter must be 'auto' or"),
        ("data.labels", "/abs/labels.csv", "The 'data.labels' parameter must be null or the path of a CSV inside "
                                           "data.source (relative to its root). Got '/abs/labels.csv' instead."),
        ("data.labels", "", "'data.labels' parameter must be a non-empty string or null"),
        ("trust.coverage", 1.0, "The 'trust.coverage' parameter must be a float in the range (0.0, 1.0). Got 1.0"),
        ("trust.unfamiliar_quantile", 0, "'trust.unfamiliar_quantile' parameter must be a float in the range (0.0, 1.0]"),
        ("trust.neighbours", 0, "'trust.neighbours' parameter must be an int in the range [1, 1000]. Got 0"),
        ("export.representative_images", 0, "'export.representative_images' parameter must be an int in the range [1"),
        ("export.max_accuracy_drop", 1.5, "'export.max_accuracy_drop' parameter must be a float in the range [0.0, 1.0]"),
    ],
)
def test_bad_values_name_key_rule_and_value(raw_params, key, value, expected):
    message = error_of(with_change(raw_params, key, value))
    assert message.startswith("params.yaml: ")
    assert expected in message


def test_image_size_minimum_is_the_backbones(raw_params):
    raw = with_change(raw_params, "backbone", "xception")
    raw["image_size"] = 64
    assert "'image_size' parameter must be an int in the range [71, 1024]. Got 64" in error_of(raw)


def test_unknown_key_suggests_the_close_one(raw_params):
    raw = copy.deepcopy(raw_params)
    raw["head"]["dropuot"] = 0.3
    message = error_of(raw)
    assert "Unknown parameter 'head.dropuot'. Did you mean 'head.dropout'?" in message


def test_unknown_top_level_key(raw_params):
    raw = copy.deepcopy(raw_params)
    raw["backbones"] = "vgg16"
    assert "Unknown parameter 'backbones'. Did you mean 'backbone'?" in error_of(raw)


def test_missing_key_is_named(raw_params):
    raw = copy.deepcopy(raw_params)
    del raw["finetune"]["augment"]["zoom"]
    assert "The 'finetune.augment.zoom' parameter is missing." in error_of(raw)


def test_unknown_backbone_lists_valid_names_with_suggestion(raw_params):
    message = error_of(with_change(raw_params, "backbone", "resnet5"))
    assert "Got 'resnet5' instead. Did you mean 'resnet50'?" in message
    assert "vgg16" in message and "efficientnet_b0" in message


def test_split_fractions_must_leave_training_data(raw_params):
    raw = with_change(raw_params, "split.val_fraction", 0.5)
    raw["split"]["test_fraction"] = 0.5
    assert "must add up to less than 1.0" in error_of(raw)


def test_freeze_accepts_words_blocks_and_layer_names(raw_params):
    for word in ("auto", "all", "none", "block3", "conv_pw_13"):
        assert parse(with_change(raw_params, "freeze", word)).freeze == word


def test_load_reports_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("backbone: [unclosed\n")
    with pytest.raises(TlpipeError, match="params.yaml: not valid YAML"):
        params.load(path)


@pytest.mark.parametrize("text, value", [("1e-05", 1e-05), ("3e-05", 3e-05), ("1E-4", 1e-4), ("2e+1", 20.0),
                                         ("-1.5e-3", -1.5e-3), ("0.0003", 0.0003), ("5", 5)])
def test_numbers_are_read_as_dvc_writes_them(tmp_path, text, value):
    """`dvc exp run -S lr=0.00003` writes 3e-05, a string to YAML 1.1 (PyYAML):
    tlpipe reads it as the float it is (YAML 1.2, as DVC itself reads it)."""
    path = tmp_path / "params.yaml"
    path.write_text(f"lr: {text}\nname: '3e-05'\nversion: 1.2.3\n")
    read = params.read_yaml(path)
    assert read["lr"] == value and type(read["lr"]) is type(value)
    assert read["name"] == "3e-05" and read["version"] == "1.2.3"  # quoted and non-numbers stay strings


def test_lbfgs_solves_linear_heads_only(raw_params):
    raw = with_change(with_change(raw_params, "head.solver", "lbfgs"), "head.hidden", [64])
    message = error_of(raw)
    assert "The 'head.solver' parameter must be 'keras' for a head with hidden layers" in message
    assert parse(with_change(raw_params, "head.solver", "lbfgs")).head.solver == "lbfgs"


def test_export_formats_are_kept_in_the_order_written(raw_params):
    p = params.parse(with_change(raw_params, "export.formats", ["onnx", "tflite_int8"]))
    assert p.export.formats == ("tflite_int8", "onnx")
    assert params.parse(with_change(raw_params, "export.formats", [])).export.formats == ()


def _flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys |= _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def test_the_params_reference_has_every_key_of_params_yaml_and_no_other():
    """docs/params.md is generated from these rules: a key without its entry (or
    an entry without its key) fails here."""
    import re

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    reference = params.reference_markdown(raw)
    listed = set(re.findall(r"^\| `([\w.]+)` \|", reference, re.MULTILINE))
    assert listed == _flat_keys(raw)
    for line in reference.splitlines():
        if line.startswith("| `"):
            key, default, accepts, doc = (cell.strip() for cell in line.strip("|").split(" | "))
            assert accepts and len(doc) > 15, key


BOMB = """
a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
bomb: &bomb [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.parametrize("key", ["head.hidden", "backbone", "freeze", "export.formats", "data"])
def test_a_yaml_alias_bomb_is_refused_at_once_with_a_bounded_excerpt(tmp_path, key):
    """A few lines that expand to 387 million items (9**9): refused by type
    before anything formats the value; the message shows a bounded excerpt.
    In a child process, so that a regression fails on its timeout, not hangs."""
    import subprocess
    import sys

    text = (REPO / "params.yaml").read_text()
    anchors = "".join(line + "\n" for line in BOMB.strip().splitlines())
    parent, _, leaf = key.rpartition(".")
    data = yaml.safe_load(text)
    node = data[parent] if parent else data
    node[leaf] = "BOMB_HERE"
    bombed = anchors.replace("bomb: &bomb", "x_bomb: &bomb") + yaml.safe_dump(data, sort_keys=False).replace(
        "'BOMB_HERE'", "*bomb").replace("BOMB_HERE", "*bomb")
    path = tmp_path / "params.yaml"
    path.write_text(bombed)
    script = ("import sys; from tlpipe import params; from tlpipe.errors import TlpipeError\n"
              "try:\n    params.load(sys.argv[1])\nexcept TlpipeError as err:\n    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    message = proc.stdout.strip()
    assert message.startswith(f"{path}: ") and len(message) < 1200, message[:2000]
