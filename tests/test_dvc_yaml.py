"""dvc.yaml declares the paths of tlpipe.paths, its stages' own code, and
exactly the params keys each stage reads (so DVC reruns only what it must)."""

import ast
import platform

import pytest
import yaml

from tlpipe import paths, resume

from conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
STAGES = DVC["stages"]

# The table in DESIGN.md / docs/pipeline.md: which stage reads which params.
READS = {
    "params": set(),  # the whole file, as a dependency: it checks every key
    "fetch": {"data.source", "data.sha256"},
    "split": {"seed", "split", "data.labels", "data.label_delimiter", "data.corrections"},
    "extract": {"backbone", "image_size", "weights", "seed", "freeze", "pooling", "extract"},
    "train_head": {"seed", "head"},
    "finetune": {"backbone", "image_size", "weights", "freeze", "seed", "pooling", "finetune"},
    "trust": {"trust", "evaluate.batch_size"},
    "evaluate": {"evaluate"},
    "export": {"seed", "export"},
    "audit": {"seed", "audit"},
    "scratch": {"image_size", "seed", "scratch", "evaluate.top_k"},
}


def names(entries):
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


def test_stage_names_are_fixed():
    assert list(STAGES) == [
        "params", "fetch", "split", "extract", "train_head", "finetune", "trust", "evaluate", "export", "audit", "scratch"
    ]


def test_each_stage_reads_exactly_its_params_and_they_exist():
    for stage, keys in READS.items():
        assert set(STAGES[stage].get("params", [])) == keys, stage
        for key in keys:
            node = PARAMS
            for part in key.split("."):
                node = node[part]


def interpolated(text: str) -> str:
    """``${a.b}`` replaced by params.yaml's value, as DVC's templating does."""
    return resume.interpolated(text, PARAMS)


def test_each_stage_depends_on_its_own_script_and_runs_it():
    for stage, spec in STAGES.items():
        script = f"stages/{stage}.py"
        assert spec["cmd"] == f"python {script}"
        assert script in spec["deps"]
        for dep in map(interpolated, spec["deps"]):
            assert (REPO / dep).exists() or dep.startswith("data/") or dep.startswith("models/"), dep


def test_the_corrections_file_is_a_dependency_of_split_and_in_git():
    assert "${data.corrections}" in STAGES["split"]["deps"]
    assert interpolated("${data.corrections}") == str(paths.CORRECTIONS)
    assert (REPO / paths.CORRECTIONS).read_text() == "file_name,label\n"


# Imported everywhere and cannot change what a stage computes.
PLUMBING = {"atomic", "errors", "params", "paths", "quiet", "stage"}
SRC = REPO / "src" / "tlpipe"


def tlpipe_imports(module: str) -> set[str]:
    """The tlpipe modules ``module`` imports directly (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse((SRC / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "tlpipe":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tlpipe."):
            found.add(node.module.split(".")[1])
    return {name for name in found if (SRC / f"{name}.py").is_file()}


def code_closure(module: str) -> set[str]:
    """``module`` and every tlpipe module it reaches through imports, plumbing aside."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += tlpipe_imports(name) - PLUMBING
    return seen


def test_each_stage_depends_on_the_code_it_runs():
    """Editing any module a stage's code reaches must rerun that stage, and
    editing one it does not reach must not."""
    for stage, spec in STAGES.items():
        code = {d for d in spec["deps"] if d.startswith("src/")}
        assert code == {f"src/tlpipe/{m}.py" for m in code_closure(stage)}, stage


def test_stage_modules_never_import_each_other():
    for stage in STAGES:
        assert not (code_closure(stage) - {stage}) & set(STAGES), stage


def stage_body(tree: ast.Module, stage: str) -> ast.Lambda | ast.FunctionDef:
    """The function a stage script passes to ``run_stage(stage, ...)``: a lambda
    or a function defined in the script."""
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_stage"]
    assert isinstance(call.args[0], ast.Constant) and call.args[0].value == stage, stage
    body = call.args[1]
    if isinstance(body, ast.Name):
        (body,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == body.id]
    return body


def params_read_by_script(stage: str) -> set[str]:
    """The params keys a stage script hands its code: every ``p.a`` / ``p.a.b``
    in the function it passes to run_stage."""
    body = stage_body(ast.parse((REPO / "stages" / f"{stage}.py").read_text()), stage)
    arg = body.args.args[0].arg
    keys = set()
    for node in ast.walk(body):
        chain = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == arg and chain:
            keys.add(".".join(chain))
    # p.evaluate.top_k also walks p.evaluate: keep the longest chains only
    return {k for k in keys if not any(o.startswith(k + ".") for o in keys)}


def test_each_stage_script_hands_its_code_exactly_the_params_dvc_yaml_lists():
    for stage, spec in STAGES.items():
        assert params_read_by_script(stage) == set(spec.get("params", [])), stage


def test_paths_match_the_paths_module():
    outs = {stage: names(spec.get("outs", [])) | names(spec.get("metrics", [])) for stage, spec in STAGES.items()}
    assert outs["params"] == {str(paths.PARAMS_CHECKED)}
    assert str(paths.PARAMS_CHECKED) in STAGES["fetch"]["deps"]  # every stage comes after the check
    assert outs["fetch"] == {str(paths.RAW)}
    assert outs["split"] == {str(paths.SPLIT), str(paths.DATA_METRICS), str(paths.DATA_REPORT)}
    assert outs["extract"] == {str(paths.FEATURES), str(paths.PREFIX)}
    assert outs["train_head"] == {str(paths.HEAD_MODEL), str(paths.HEAD_LOGS), str(paths.HEAD_METRICS),
                                  str(paths.HEAD_REPORT)}
    assert outs["finetune"] == {str(paths.MODEL), str(paths.FINETUNE_LOGS), str(paths.FINETUNE_METRICS),
                                str(paths.FINETUNE_REPORT)}
    assert outs["evaluate"] == {str(paths.PLOTS), str(paths.EVAL_METRICS), str(paths.EVAL_REPORT)}
    assert outs["export"] == {str(paths.EXPORT), str(paths.EXPORT_METRICS), str(paths.EXPORT_REPORT)}
    assert outs["audit"] == {str(paths.AUDIT_PLOTS), str(paths.AUDIT_METRICS), str(paths.AUDIT_REPORT)}
    assert outs["scratch"] == {str(paths.SCRATCH_LOGS), str(paths.SCRATCH_METRICS), str(paths.SCRATCH_REPORT)}
    produced = set().union(*outs.values())
    for stage, spec in STAGES.items():
        for dep in spec["deps"]:
            if dep.startswith(("data/", "models/")):
                assert dep in produced, f"{stage} depends on {dep}, which no stage writes"


def test_only_split_depends_on_the_image_folder():
    """The stages after split read the images its CSVs list and depend on
    data/split, whose images.sha256 changes with any image's bytes (a folder of
    30k files costs DVC about a second to hash, for every stage that lists it)."""
    assert [stage for stage, spec in STAGES.items() if str(paths.RAW) in spec["deps"]] == ["split"]
    for stage in ("extract", "finetune", "trust", "evaluate", "export", "audit", "scratch"):
        assert str(paths.SPLIT) in STAGES[stage]["deps"], stage
    assert paths.image_hashes_file().parent == paths.SPLIT


def test_metrics_are_git_tracked_and_reports_are_no_dvc_metrics():
    """metrics/ holds the DVC metrics (in git: cache: false), reports/ the rest,
    DVC-cached: no report is a metric (`dvc metrics show` stays short), and no
    stage has an uncached output but metrics (DVC would skip its run-cache)."""
    for stage, spec in STAGES.items():
        for entry in spec.get("metrics", []):
            (path, options), = entry.items()
            assert path.startswith(str(paths.METRICS) + "/") and options == {"cache": False}, stage
        for entry in spec.get("outs", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            assert isinstance(entry, str) or next(iter(entry.values())).get("cache", True), \
                f"{stage}: {entry} (cache: false costs the run-cache)"


def test_plots_point_at_files_the_pipeline_writes():
    for entry in DVC["plots"]:
        if isinstance(entry, str):
            assert entry.startswith((str(paths.PLOTS) + "/", str(paths.AUDIT_PLOTS) + "/"))
            continue
        (_, spec), = entry.items()
        for path in spec["y"]:
            assert path.startswith(
                (str(paths.PLOTS) + "/", str(paths.HEAD_LOGS), str(paths.FINETUNE_LOGS), str(paths.SCRATCH_LOGS))
            )


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="the C parser is CPython's")
def test_dvc_parses_its_yaml_files_with_ruamels_c_parser():
    """pyproject's ruamel.yaml.clib: every dvc command reads dvc.yaml, dvc.lock
    and params.yaml with the safe loader, which is pure Python without it."""
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None
    assert YAML(typ="safe").Parser is CParser
