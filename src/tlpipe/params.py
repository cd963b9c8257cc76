"""params.yaml, parsed once into typed, validated objects.

``load()`` reads the whole file and checks every key, so a typo anywhere
stops the stage before any work is done. Errors read like scikit-learn's:

    params.yaml: The 'head.dropout' parameter must be a float in the range
    [0.0, 1.0). Got 1.5 instead.

params.yaml is the one place defaults live: a missing key is an error too,
which also keeps dvc.yaml's exact-key ``params:`` lists honest.

Each key's rule is declared beside its field (``rule``) and read by one loop
(``read_section``); a rule that belongs to a vocabulary with a home of its
own is that module's (the freeze word: tlpipe.freeze; what data.source may
name: tlpipe.data_source; backbones and their weights: tlpipe.backbones).
Every message is worded by ``errors.invalid``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from tlpipe import backbones, catalogs, data_source, freeze, paths
from tlpipe.errors import TlpipeError, excerpt, invalid

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "plateau")
POOLINGS = ("avg", "grid")  # the backbone's last feature map -> the vector the head reads
# What the export stage writes (models/export/model_<format>...), in the order written.
EXPORT_FORMATS = ("saved_model", "tflite", "tflite_float16", "tflite_int8", "onnx")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def rule(reader: str, *args: Any, doc: str, default: Any = MISSING, **kwargs: Any):
    """A field's rule, declared beside it: the _Section reader that checks the
    key of the same name, with its bounds (read_section applies them), and the
    sentence the params reference shows for it (docs/params.md)."""
    return field(default=default, metadata={"reader": (reader, args, kwargs), "doc": doc})


@dataclass(frozen=True)
class DataParams:
    source: str = rule("text", doc="Where the images come from: a URL or path of an archive, a folder of class "
                                   "folders, `keras:NAME` (cifar10, cifar100, mnist, fashion_mnist) or `tfds:NAME`.")
    sha256: str | None = rule("text", allow_null=True, doc="The archive's SHA-256, checked after download; null "
                                                           "checks nothing.")
    labels: str | None = rule("text", allow_null=True, default=None,
                              doc="A CSV inside the source (`file_name,label[,split]`) instead of class folders; "
                                  "null: each image's folder is its class. A `labels` column instead of `label` "
                                  "makes the run multi-label (each image's label names, see label_delimiter).")
    label_delimiter: str = rule("character", default=" ",
                                doc="What separates the label names in a multi-label CSV's `labels` cells (one "
                                    "space, as fastai's and the PASCAL/Planet CSVs; names with spaces need another, "
                                    "e.g. `;`).")
    corrections: str = rule("text", default=str(paths.CORRECTIONS),
                            doc="Reviewed label fixes kept in git (`file_name,label`; the label `exclude` drops "
                                "the image).")


@dataclass(frozen=True)
class SplitParams:
    val_fraction: float = rule("real", 0.0, 1.0, low_closed=False,
                               doc="Share of each class held out as val when the source has no val folder.")
    test_fraction: float = rule("real", 0.0, 1.0, low_closed=False,
                                doc="Share of each class held out as test when the source has no test folder.")
    test_from_val: float = rule("real", 0.0, 1.0, low_closed=False,
                                doc="Share of a predefined `validation/` folder carved off as test.")


@dataclass(frozen=True)
class ExtractParams:
    batch_size: int = rule("integer", 1, 4096, doc="Images per batch through the frozen backbone.")
    prefix_max_gb: float = rule("real", 0.0, None, doc="Disk the frozen layers' stored outputs (`data/prefix`) may "
                                                       "take; beyond it fine-tuning decodes images instead.")


@dataclass(frozen=True)
class HeadParams:
    solver: str = rule("choice", ("keras", "lbfgs"),
                       doc="`lbfgs`: the exact logistic regression (a linear head, its L2 cross-validated); "
                           "`keras`: Adam with dropout and early stopping (hidden layers allowed).")
    hidden: tuple[int, ...] = rule("widths", doc="Widths of hidden Dense layers (keras solver); `[]` is a linear "
                                                 "head.")
    dropout: float = rule("real", 0.0, 1.0, doc="Dropout before each Dense layer (keras solver).")
    batchnorm: bool = rule("boolean", doc="BatchNormalization after each hidden layer (keras solver).")
    l2: float | None = rule("auto_or_real", 0.0, None,
                            doc="L2 strength; `auto`: cross-validated over train + val (lbfgs), 0 (keras).")
    optimizer: str = rule("choice", OPTIMIZERS, doc="Optimizer of the keras solver.")
    learning_rate: float = rule("real", 0.0, 10.0, low_closed=False, doc="Learning rate of the keras solver.")
    epochs: int = rule("integer", 1, 100_000, doc="Epoch cap of the keras solver (early stopping ends it sooner).")
    batch_size: int = rule("integer", 1, 65_536, doc="Feature rows per batch (keras solver).")
    patience: int = rule("integer", 0, 100_000, doc="Epochs without a lower val loss before the keras solver stops, "
                                                    "best weights restored; 0: every epoch, last weights kept.")
    label_smoothing: float = rule("real", 0.0, 1.0, doc="Label smoothing of the keras solver's loss.")
    class_weight: str = rule("choice", ("auto", "none"), doc="`auto` weighs skewed classes to balance; `none` "
                                                             "weighs every image alike.")


@dataclass(frozen=True)
class AugmentParams:
    flip: bool = rule("boolean", doc="Random horizontal flips while fine-tuning.")
    rotation: float = rule("real", 0.0, 0.5, high_closed=True, doc="Largest random rotation, a fraction of a "
                                                                   "full turn (0 = off).")
    zoom: float = rule("real", 0.0, 1.0, doc="Largest random zoom in or out, a fraction (0 = off).")
    translation: float = rule("real", 0.0, 1.0, doc="Largest random shift, a fraction of the side (0 = off).")
    contrast: float = rule("real", 0.0, 1.0, doc="Largest random contrast change, a fraction (0 = off).")
    crop: float = rule("real", 0.0, 1.0, doc="Random resized crop: the smallest share of the area kept (0 = off).")

    @property
    def any(self) -> bool:
        return self.flip or any(
            v > 0 for v in (self.rotation, self.zoom, self.translation, self.contrast, self.crop)
        )


@dataclass(frozen=True)
class FinetuneParams:
    runs: int = rule("integer", 1, 100, doc="Runs from the trained head, each its own data order, their weights "
                                            "averaged (a model soup).")
    epochs: int = rule("integer", 0, 100_000, doc="Epochs per run; 0 ships the head.")
    batch_size: int = rule("integer", 1, 65_536, doc="Images per batch (all replicas together).")
    optimizer: str = rule("choice", OPTIMIZERS, doc="Optimizer for the unfrozen blocks and the head.")
    learning_rate: float = rule("real", 0.0, 10.0, low_closed=False,
                                doc="Peak learning rate: small steps keep the pretrained features.")
    schedule: str = rule("choice", SCHEDULES, doc="`cosine` to zero over each run, `constant`, or `plateau` "
                                                  "(lowered when val loss stalls).")
    warmup_epochs: int = rule("integer", 0, 100_000, doc="Epochs of linear warm-up before the schedule.")
    patience: int = rule("integer", 0, 100_000, doc="0: every epoch runs, the last weights kept; N: stop after N "
                                                    "epochs without a lower val loss, the best kept.")
    label_smoothing: float = rule("real", 0.0, 1.0, doc="Label smoothing of the fine-tuning loss.")
    augment: AugmentParams = rule("section", AugmentParams, doc="Data augmentation while fine-tuning.")
    mixed_precision: bool | None = rule("auto_or_bool", doc="`mixed_float16` compute; `auto`: on when a GPU is "
                                                            "present.")
    xla: bool = rule("boolean", doc="Compile the training step with XLA.")
    tta: bool | None = rule("auto_or_bool", doc="Mirror-image test-time augmentation; `auto`: kept if it lowers "
                                                "val loss.")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = rule("integer", 1, 65_536, doc="Images per batch when scoring (trust and evaluate).")
    top_k: int = rule("integer", 2, 100, doc="Top-k accuracy is reported when there are more than k classes.")
    gallery: int = rule("integer", 0, 1000, doc="Most confident mistakes shown in `plots/evaluate/mistakes.png`.")


@dataclass(frozen=True)
class TrustParams:
    coverage: float = rule("real", 0.0, 1.0, low_closed=False,
                           doc="Prediction sets hold the true class at least this often (split conformal, "
                               "calibrated on val).")
    unfamiliar_quantile: float = rule("real", 0.0, 1.0, low_closed=False, high_closed=True,
                                      doc="Share of val images within the unfamiliar threshold; beyond it an "
                                          "image is unfamiliar.")
    neighbours: int = rule("integer", 1, 1000, doc="k: the unfamiliar score is the cosine distance to the k-th "
                                                   "nearest train image.")


@dataclass(frozen=True)
class ExportParams:
    formats: tuple[str, ...] = rule("subset", EXPORT_FORMATS, doc="The formats written to `models/export/`, each "
                                                                  "scored on test in its own runtime; `[]` none.")
    representative_images: int = rule("integer", 1, 100_000,
                                      doc="Train images that calibrate tflite_int8's integer ranges.")
    max_accuracy_drop: float = rule("real", 0.0, 1.0, high_closed=True,
                                    doc="A format losing more test accuracy than this fails the stage.")


@dataclass(frozen=True)
class AuditParams:
    near_duplicate_similarity: float | None = rule(
        "auto_or_real", 0.0, 1.0, low_closed=False, high_closed=True,
        doc="Cosine similarity of cached features above which two images are near-duplicates; `auto`: fitted "
            "on near-copies of train images.")
    folds: int = rule("integer", 2, 20, doc="Folds of the out-of-fold predictions that find likely label errors.")
    gallery: int = rule("integer", 0, 200, doc="Pairs and images shown in `plots/audit/*.png`.")


@dataclass(frozen=True)
class ScratchParams:
    enabled: bool = rule("boolean", doc="Train the from-scratch baseline (a small CNN, no pretrained weights).")
    epochs: int = rule("integer", 1, 100_000, doc="Epoch cap of the baseline.")
    batch_size: int = rule("integer", 1, 65_536, doc="Images per batch of the baseline.")
    learning_rate: float = rule("real", 0.0, 10.0, low_closed=False, doc="Adam's learning rate for the baseline.")
    patience: int = rule("integer", 0, 100_000, doc="Early stopping patience of the baseline (val loss).")


@dataclass(frozen=True)
class Params:
    backbone: str
    image_size: int
    weights: str
    freeze: str
    seed: int
    pooling: str
    data: DataParams
    split: SplitParams
    extract: ExtractParams
    head: HeadParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    trust: TrustParams
    export: ExportParams
    audit: AuditParams
    scratch: ScratchParams

    def with_overrides(self, **changes: Any) -> Params:
        return replace(self, **changes)


class _Section:
    """Reads one mapping of params.yaml, tracking which keys were used so that
    leftovers can be reported as unknown (with a close-match suggestion)."""

    def __init__(self, source: str, mapping: Any, prefix: str):
        self.source = source
        self.prefix = prefix
        if not isinstance(mapping, dict):
            where = f"The '{prefix[:-1]}' section" if prefix else "The file"
            self.fail(f"{where} must be a mapping of keys to values. Got {excerpt(mapping)} instead.")
        self.mapping = mapping
        self.used: set[str] = set()

    def fail(self, message: str):
        raise TlpipeError(f"{self.source}: {message}")

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def get(self, key: str) -> Any:
        self.used.add(key)
        if key not in self.mapping:
            self.fail(f"The '{self.name(key)}' parameter is missing.")
        return self.mapping[key]

    def section(self, key: str) -> _Section:
        return _Section(self.source, self.get(key), self.name(key) + ".")

    def bad(self, key: str, rule: str, value: Any, hint: str = ""):
        raise invalid(self.name(key), rule, value, hint, self.source)

    def integer(self, key: str, low: int | None = None, high: int | None = None) -> int:
        value = self.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            self.bad(key, rule_text("integer", low, high), value)
        return value

    def real(
        self, key: str, low: float, high: float | None, low_closed=True, high_closed=False
    ) -> float:
        value = self.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = (value >= low if low_closed else value > low) and (
                high is None or (value <= high if high_closed else value < high)
            )
        if not ok:
            self.bad(key, rule_text("real", low, high, low_closed=low_closed, high_closed=high_closed), value)
        return value

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            self.bad(key, rule_text("boolean"), value)
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.get(key)
        if value not in options:
            self.bad(key, rule_text("choice", options), value)
        return value

    def text(self, key: str, allow_null=False) -> str | None:
        value = self.get(key)
        if value is None and allow_null:
            return None
        if not isinstance(value, str) or not value.strip():
            self.bad(key, rule_text("text", allow_null=allow_null), value)
        return value

    def character(self, key: str) -> str:
        """One character that can separate names in a CSV cell."""
        value = self.get(key)
        if not isinstance(value, str) or len(value) != 1 or value in ',"\n\r':
            self.bad(key, rule_text("character"), value)
        return value

    def auto_or_real(self, key: str, low: float, high: float | None, low_closed=True, high_closed=False
                     ) -> float | None:
        """``auto`` (None: chosen at run time) or a float in the range given."""
        value = self.get(key)
        if value == "auto":
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (value >= low if low_closed else value > low) and (
            high is None or (value <= high if high_closed else value < high))
        if not ok:
            self.bad(key, rule_text("auto_or_real", low, high, low_closed=low_closed, high_closed=high_closed), value)
        return float(value)

    def auto_or_bool(self, key: str) -> bool | None:
        """``auto`` (None: decided at run time), true or false."""
        value = self.get(key)
        if not (value == "auto" or isinstance(value, bool)):
            self.bad(key, rule_text("auto_or_bool"), value)
        return None if value == "auto" else value

    def widths(self, key: str) -> tuple[int, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not all(
            isinstance(u, int) and not isinstance(u, bool) and u >= 1 for u in value
        ):
            self.bad(key, rule_text("widths"), value)
        return tuple(value)

    def subset(self, key: str, options: tuple[str, ...]) -> tuple[str, ...]:
        """Distinct options, returned in the order of ``options``."""
        value = self.get(key)
        if not (isinstance(value, list) and all(v in options for v in value) and len(set(value)) == len(value)):
            self.bad(key, rule_text("subset", options), value)
        return tuple(o for o in options if o in value)

    def finish(self):
        unknown = sorted(set(self.mapping) - self.used, key=str)
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(str(key), sorted(self.used), n=1)
            hint = f" Did you mean '{self.name(close[0])}'?" if close else ""
            valid = ", ".join(sorted(self.used))
            self.fail(f"Unknown parameter '{self.name(key)}'.{hint} Valid keys here: {valid}.")


def rule_text(reader: str, *args: Any, low_closed: bool = True, high_closed: bool = False,
              allow_null: bool = False) -> str:
    """What a rule accepts, worded once for its error message and the params reference."""
    if reader == "integer":
        return "an int" + _range_text(*(args + (None, None))[:2], True, True)
    if reader in ("real", "auto_or_real"):
        kind = "a float" if reader == "real" else "'auto' or a float"
        return kind + _range_text(*args[:2], low_closed, high_closed)
    return {
        "boolean": lambda: "a bool (true or false)",
        "choice": lambda: "one of " + ", ".join(repr(o) for o in args[0]),
        "text": lambda: "a non-empty string" + (" or null" if allow_null else ""),
        "character": lambda: "one character other than a comma, a quote or a newline (default one space)",
        "auto_or_bool": lambda: "'auto', true or false",
        "widths": lambda: "a list of layer widths (ints >= 1); [] for a linear head",
        "subset": lambda: "a list of distinct formats among " + ", ".join(args[0]) + " ([] exports nothing)",
    }[reader]()


def _range_text(low, high, low_closed, high_closed) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>=' if low_closed else '>'} {low}"
    if low is None:
        return f" {'<=' if high_closed else '<'} {high}"
    return f" in the range {'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"


# The top-level keys (read in ``parse``, whose rules depend on the backbone):
# what each accepts and the sentence the params reference shows.
TOP_LEVEL = {
    "backbone": ("one of the registry's names (docs/pipeline.md, Backbones)",
                 "The pretrained network under the head; its own preprocessing and stage map come with it."),
    "image_size": ("an int in the range [the backbone's minimum, 1024]", "Square input side in pixels."),
    "weights": (rule_text("text"), "`imagenet` (Keras' download and cache, `KERAS_HOME`), `none` (random "
                                   "initialisation, for tests) or the path of a weights file."),
    "freeze": ("auto, all, none, blockN (the backbone's stages) or a Keras layer name",
               "Where fine-tuning starts: `blockN` trains stage N and above, `all` trains the head alone, `none` "
               "everything but BatchNormalization; `auto` is the backbone's default."),
    "seed": (rule_text("integer", 0, 2**31 - 1), "Seeds the split, every data order and every initialisation."),
    "pooling": (rule_text("choice", POOLINGS), "How the last feature map becomes the head's input: `grid` (its "
                                               "average and its four quadrants'), `avg` (the average alone)."),
}


def _reference_rows(cls, values: dict, prefix: str):
    """(key, default, rule, sentence) for each field of ``cls``, sections unfolded."""
    for f in fields(cls):
        reader, args, kwargs = f.metadata["reader"]
        key = f"{prefix}{f.name}"
        if reader == "section":
            yield from _reference_rows(args[0], values.get(f.name) or {}, key + ".")
        else:
            yield key, values.get(f.name), rule_text(reader, *args, **kwargs), f.metadata["doc"]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def reference_markdown(raw: dict) -> str:
    """The params reference (docs/params.md): every key with its default in
    ``raw`` (params.yaml), what it accepts and what it does, section by section."""
    import json

    def default(value) -> str:
        return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"

    def table(rows) -> list[str]:
        out = ["| key | default | accepts | what it does |", "| --- | --- | --- | --- |"]
        out += [f"| `{key}` | {_cell(default(value))} | {_cell(rule)} | {_cell(doc)} |" for key, value, rule, doc in rows]
        return out

    lines = ["## Top level", ""]
    lines += table((key, raw.get(key), rule, doc) for key, (rule, doc) in TOP_LEVEL.items())
    for name, (cls, _) in SECTIONS.items():
        lines += ["", f"## `{name}`", ""]
        lines += table(_reference_rows(cls, raw.get(name) or {}, f"{name}."))
    return "\n".join(lines) + "\n"


def parse(raw: Any, source: str = str(paths.PARAMS)) -> Params:
    """Validate a params mapping (as read from YAML) into a Params object."""
    top = _Section(source, raw, "")
    backbone = top.get("backbone")
    if not isinstance(backbone, str) or backbone not in backbones.names():
        top.bad("backbone", TOP_LEVEL["backbone"][0], backbone, backbones.did_you_mean(backbone))
    spec = backbones.get(backbone)
    image_size = top.integer("image_size", spec.min_size, 1024)
    weights = top.text("weights")
    freeze_word = top.text("freeze")
    if not freeze.spelled_right(freeze_word, spec):  # a layer name is checked on the architecture, in gate
        top.bad("freeze", freeze.rule(spec), freeze_word, f"(backbone '{backbone}')")
    seed = top.integer("seed", 0, 2**31 - 1)  # TOP_LEVEL's rule
    pooling = top.choice("pooling", POOLINGS)

    # Each section of params.yaml, in file order: read by its fields' rules, then its own checks.
    sections = {name: read_section(top.section(name), cls, check) for name, (cls, check) in SECTIONS.items()}
    top.finish()
    return Params(backbone=backbone, image_size=image_size, weights=weights, freeze=freeze_word, seed=seed,
                  pooling=pooling, **sections)


def read_section(section: _Section, cls, check=None):
    """Every field of ``cls`` read by its declared rule, ``check`` (rules
    between fields) applied, then unknown keys reported."""
    values = {}
    for f in fields(cls):
        reader, args, kwargs = f.metadata["reader"]
        if reader == "section":
            values[f.name] = read_section(section.section(f.name), *args)
        else:
            values[f.name] = getattr(section, reader)(f.name, *args, **kwargs)
    result = cls(**values)
    if check is not None:
        check(result, section)
    section.finish()
    return result


def _check_data(data: DataParams, section: _Section) -> None:
    if data.labels is not None and (Path(data.labels).is_absolute() or ".." in Path(data.labels).parts):
        section.bad("labels", "null or the path of a CSV inside data.source (relative to its root)", data.labels)
    if Path(data.corrections).is_absolute() or ".." in Path(data.corrections).parts:
        section.bad("corrections",
                    f"the path of a CSV inside this repository, e.g. {paths.CORRECTIONS} (DVC tracks it)",
                    data.corrections)
    if catalogs.is_catalog(data.source):
        if rule_broken := catalogs.problem(data.source):
            section.bad("source", rule_broken, data.source)
        if data.sha256 is not None:
            section.bad("sha256", "null for a catalog source (its loader checks its own download)", data.sha256)
        if data.labels is not None:
            section.bad("labels", "null for a catalog source (the catalog has its own labels)", data.labels)
    if data.sha256 is not None and not _SHA256.fullmatch(data.sha256):
        section.bad("sha256", "null or a 64-digit hex SHA-256", data.sha256)
    if rule_broken := data_source.url_rule_broken(data.source):
        section.bad("source", rule_broken, data.source)


def _check_split(split: SplitParams, section: _Section) -> None:
    if split.val_fraction + split.test_fraction >= 1.0:
        section.fail(
            "The 'split.val_fraction' and 'split.test_fraction' parameters must add up to less "
            f"than 1.0 so that some images are left to train on. Got "
            f"{split.val_fraction} + {split.test_fraction} instead."
        )


def _check_head(head: HeadParams, section: _Section) -> None:
    if head.solver == "lbfgs" and head.hidden:
        section.bad("solver", "'keras' for a head with hidden layers ('lbfgs' solves a linear head, head.hidden: [])",
                    head.solver)


# params.yaml's sections: the dataclass whose fields declare each key's rule,
# and the rules between keys that no single field can state.
SECTIONS = {
    "data": (DataParams, _check_data),
    "split": (SplitParams, _check_split),
    "extract": (ExtractParams, None),
    "head": (HeadParams, _check_head),
    "finetune": (FinetuneParams, None),
    "evaluate": (EvaluateParams, None),
    "trust": (TrustParams, None),
    "export": (ExportParams, None),
    "audit": (AuditParams, None),
    "scratch": (ScratchParams, None),
}


class _Loader(yaml.SafeLoader):
    """YAML as DVC writes it: ``dvc exp run -S lr=0.00003`` stores ``3e-05``,
    which YAML 1.1 (PyYAML) reads as a string; YAML 1.2 and DVC read a float."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(path: Path | str = paths.PARAMS) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TlpipeError(f"{path}: file not found; run from the repository root.") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise TlpipeError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None


def load(path: Path | str = paths.PARAMS) -> Params:
    return parse(read_yaml(path), str(path))


def gate(p: Params) -> None:
    """The pipeline's first stage: params.yaml is valid (``load`` checked every
    key; here also a ``freeze`` layer name, on the backbone's architecture).

    DVC removes a stage's outputs before running it: a bad value caught here,
    before any stage that reads it, leaves every earlier result in place. The
    file it writes never changes, so a valid params change reruns nothing else.
    """
    freeze.check_on_architecture(p.freeze, backbones.get(p.backbone), p.image_size)
    from tlpipe import atomic

    atomic.write_text(paths.PARAMS_CHECKED, "params.yaml is valid\n")
