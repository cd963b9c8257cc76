"""Helpers shared by the benchmarks: run from the repository root, print figures."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from tlpipe import quiet  # noqa: E402

quiet.install()  # TensorFlow's start-up log out of the figures (TLPIPE_VERBOSE=1 shows it)
os.environ["DVC_NO_ANALYTICS"] = "1"
SHARED_KERAS = REPO.parent / "shared" / "keras"


def require_keras_home() -> None:
    home = os.environ.get("KERAS_HOME")
    if not home and SHARED_KERAS.is_dir():
        os.environ["KERAS_HOME"] = str(SHARED_KERAS)
    elif not home:
        print("note: KERAS_HOME not set; ImageNet weights and data will be downloaded")


def tool_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return env


def copy_pipeline(target: Path) -> Path:
    """A fresh git+DVC repo with this checkout's pipeline and an empty DVC cache."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore", "data/corrections.csv"):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, target / name)
    for folder in ("stages", "src"):
        shutil.copytree(REPO / folder, target / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = tool_env()
    subprocess.run(["git", "init", "-q"], cwd=target, env=env, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=target, env=env, check=True)
    for name in ("config", "offline_plots.html"):  # the offline plots page
        shutil.copy(REPO / ".dvc" / name, target / ".dvc" / name)
    shutil.copytree(REPO / ".dvc" / "plots", target / ".dvc" / "plots")
    for cmd in (["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@tlpipe.invalid", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=target, env=env, check=True)
    return target


def timed(cmd: list[str], cwd: Path) -> float:
    return run_timed(cmd, cwd)[0]


def run_timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """(wall seconds, stdout) of ``cmd``; its output's tail and SystemExit if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd)} failed")
    return time.perf_counter() - start, proc.stdout


def stage_costs(out: str) -> dict[str, tuple[float, float]]:
    """stage -> (seconds, peak RSS MB), read off each stage's "done in" line."""
    found = re.findall(r"^(\w+): done in ([0-9.]+)s .*peak memory ([0-9,]+) MB", out, re.MULTILINE)
    return {name: (float(s), float(mb.replace(",", ""))) for name, s, mb in found}


def repo_from_argv(name: str, up_to_stage: str) -> Path:
    """The repository named on the command line, else a fresh copy of the
    pipeline with ``dvc repro up_to_stage`` run on the default params."""
    import tempfile

    require_keras_home()
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    repo = copy_pipeline(Path(tempfile.mkdtemp(prefix=f"tlpipe-{name}-")) / "repo")
    timed(["dvc", "repro", up_to_stage], repo)
    return repo


BENCHMARKS_PAGE = REPO / "docs" / "benchmarks.md"


def machine() -> str:
    """The CPU model and cores: figures differ between CPUs."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        import platform

        model = platform.processor() or model
    return f"{model}, {os.cpu_count()} cores"


def commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty else "")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(name: str, title: str, body: str, command: str | None = None) -> None:
    """Replace benchmark ``name``'s section of docs/benchmarks.md with ``body``
    under its command (by default this script's), machine, commit and date:
    the page holds today's figures only (git keeps the history)."""
    import datetime

    command = command or "python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    stamp = (f"`{command}` · {machine()} · commit {commit()} · "
             f"{datetime.date.today().isoformat()}")
    section = f"<!-- bench:{name} -->\n## {title}\n\n{stamp}\n\n{body.strip()}\n<!-- /bench:{name} -->"
    page = BENCHMARKS_PAGE.read_text()
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.DOTALL)
    page = pattern.sub(lambda _: section, page) if pattern.search(page) else page.rstrip("\n") + "\n\n" + section + "\n"
    BENCHMARKS_PAGE.write_text(page)
    print(f"wrote the '{title}' table to {BENCHMARKS_PAGE.relative_to(REPO)}")
