"""``tlpipe compare``: the experiments side by side, on one screen.

`dvc exp show` lists every param and metric: a wide table that a terminal
collapses to ``…``. This reads the same data (`dvc exp show --json`) and
shows, for the workspace, each baseline commit and each experiment: its name,
the params it changed against its baseline, and the headline metrics below.
Long cells wrap inside their column, so the table never passes ``width``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from dataclasses import dataclass

from tlpipe import paths
from tlpipe.errors import TlpipeError

WIDTH = 160
# (heading, metrics file, key, decimals): the shipped model on test, then how it was chosen.
# A multi-label run has no accuracy: its mean average precision takes the column ("key|fallback").
COLUMNS = (
    ("test acc|mAP", paths.EVAL_METRICS, "accuracy|average_precision_macro", 4),
    ("macro F1", paths.EVAL_METRICS, "f1_macro", 4),
    ("log loss", paths.EVAL_METRICS, "log_loss", 4),
    ("head acc|mAP", paths.EVAL_METRICS, "head_accuracy|head_average_precision_macro", 4),
    ("val loss", paths.FINETUNE_METRICS, "val_loss", 4),
    ("shipped", paths.FINETUNE_METRICS, "shipped", 0),
    ("fit s", paths.FINETUNE_METRICS, "fit_seconds", 1),
)
GAP = "  "


@dataclass
class Row:
    name: str
    changed: str  # "key=value, ..." against the baseline; "" for a baseline itself
    figures: tuple[str, ...]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _params(state: dict) -> dict:
    data = state.get("data") or {}
    return _flat((data.get("params") or {}).get(str(paths.PARAMS), {}).get("data") or {})


def _cell(value, decimals: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{decimals}f}"
    return str(value)


def _figures(state: dict) -> tuple[str, ...]:
    metrics = (state.get("data") or {}).get("metrics") or {}

    def first(figures: dict, keys: str):
        return next((figures[k] for k in keys.split("|") if figures.get(k) is not None), None)

    return tuple(_cell(first((metrics.get(str(path)) or {}).get("data") or {}, keys), decimals)
                 for _, path, keys, decimals in COLUMNS)


def _changes(params: dict, baseline: dict) -> str:
    """As `dvc exp run -S` takes them: key=value, the value as params.yaml holds it."""
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
                     for k, v in params.items() if baseline.get(k, object()) != v)


def rows(shown: list[dict]) -> list[Row]:
    """The rows of `dvc exp show --json`'s output: the workspace (against the
    first baseline), each baseline commit, then its experiments."""
    baselines = [s for s in shown if s.get("rev") != "workspace"]
    first = _params(baselines[0]) if baselines else {}
    out = []
    for state in shown:
        if state.get("rev") == "workspace":
            out.append(Row("workspace", _changes(_params(state), first), _figures(state)))
            continue
        base = _params(state)
        out.append(Row(state.get("name") or state["rev"][:7], "", _figures(state)))
        for exp in state.get("experiments") or []:
            final = (exp.get("revs") or [{}])[0]
            name = exp.get("name") or final.get("name") or str(final.get("rev", ""))[:7]
            out.append(Row(f"  {name}", _changes(_params(final), base), _figures(final)))
    return out


def render(table: list[Row], width: int = WIDTH) -> str:
    """A text table at most ``width`` columns wide; names and changes wrap."""
    figure_widths = [max([len(h)] + [len(r.figures[i]) for r in table]) for i, (h, *_) in enumerate(COLUMNS)]
    fixed = sum(figure_widths) + len(GAP) * len(COLUMNS)
    name_width = min(max([len("experiment")] + [len(r.name) for r in table]), 28)
    changed_width = max(width - fixed - name_width - len(GAP), 12)
    if fixed + name_width + len(GAP) + changed_width > width:
        raise TlpipeError(f"a width of {width} columns cannot hold the comparison; give --width "
                          f"{fixed + name_width + len(GAP) + 12} or more.")

    def line(name: str, changed: str, figures) -> str:
        cells = [name.ljust(name_width), changed.ljust(changed_width)]
        cells += [f.rjust(w) for f, w in zip(figures, figure_widths)]
        return GAP.join(cells).rstrip()

    out = [line("experiment", "params changed",
                [h for h, *_ in COLUMNS])]
    for r in table:
        names = textwrap.wrap(r.name, name_width, break_on_hyphens=False, drop_whitespace=False) or [""]
        names = [names[0]] + [n.strip() for n in names[1:]]
        changes = textwrap.wrap(r.changed, changed_width, break_long_words=True) or ["-" if r.changed == "" else ""]
        for i in range(max(len(names), len(changes))):
            out.append(line(names[i] if i < len(names) else "", changes[i] if i < len(changes) else "",
                            r.figures if i == 0 else [""] * len(COLUMNS)))
    return "\n".join(out) + "\n"


def exp_show() -> list[dict]:
    """`dvc exp show --json` in the current repository."""
    dvc = shutil.which("dvc")
    if dvc is None:
        raise TlpipeError("dvc is not on PATH: activate the environment that has it (source .venv/bin/activate).")
    proc = subprocess.run([dvc, "exp", "show", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TlpipeError(f"`dvc exp show --json` failed: {(proc.stderr or proc.stdout).strip()[:500]}")
    return json.loads(proc.stdout)
