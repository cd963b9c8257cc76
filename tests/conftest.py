"""Shared test fixtures: synthetic image folders made on the fly, params from the
repo's own params.yaml, and real temporary git+DVC repositories. No network."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

os.environ["DVC_NO_ANALYTICS"] = "1"

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from tlpipe import quiet  # noqa: E402

# As every tlpipe process: subprocesses inherit it, and tests that want
# TensorFlow's log set TF_CPP_MIN_LOG_LEVEL or TLPIPE_VERBOSE themselves.
quiet.install()
SHARED_KERAS = REPO.parent / "shared" / "keras"
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200)}


def draw_image(colour, seed: int, size=(48, 40)) -> Image.Image:
    """A class-coloured background with a random darker shape: separable by colour,
    never two identical files."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=float)
    pixels = np.clip(base + rng.normal(0, 18, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    x, y = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
    draw.ellipse([x, y, x + size[0] // 3, y + size[1] // 3], fill=tuple(int(c * 0.5) for c in colour))
    return img


def make_class_folders(root: Path, per_class: int = 12, classes=("red", "blue"), fmt="JPEG") -> Path:
    """Class folders of distinct images; folders of other names (train/, validation/)
    get other images, so that no two files anywhere share their bytes."""
    import zlib

    offset = zlib.crc32(root.name.encode()) % 100_000 * 100
    for ci, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = ".jpg" if fmt == "JPEG" else ".png"
            draw_image(COLOURS[name], seed=offset + 1000 * ci + i).save(folder / f"{name}_{i:03d}{suffix}", fmt)
    return root


@pytest.fixture
def images_dir(tmp_path) -> Path:
    return make_class_folders(tmp_path / "images")


@pytest.fixture
def raw_params() -> dict:
    """The repo's params.yaml as a dict (tests override what they need)."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def set_dotted(params: dict, key: str, value) -> None:
    """params['a']['b'] = value for key 'a.b', as `dvc exp run -S a.b=value`."""
    *parents, leaf = key.split(".")
    for part in parents:
        params = params[part]
    params[leaf] = value


def tiny_params(raw: dict, source: Path | str, **top) -> dict:
    """Params for a fast run on synthetic data with a random-weight backbone."""
    p = copy.deepcopy(raw)
    p.update({"backbone": "mobilenet_0.25", "image_size": 32, "weights": "none", "freeze": "block5"})
    p.update(top)
    p["data"] = {"source": str(source), "sha256": None, "labels": None, "label_delimiter": " ",
                 "corrections": "data/corrections.csv"}
    p["split"].update({"val_fraction": 0.25, "test_fraction": 0.25})
    p["extract"]["batch_size"] = 16
    p["head"].update({"epochs": 3, "batch_size": 8, "patience": 0})
    p["finetune"].update({"runs": 1, "epochs": 2, "batch_size": 8, "patience": 0})
    p["evaluate"].update({"batch_size": 16, "gallery": 4})
    # Two runtimes of the five (the others: tests/test_export.py); every
    # model change reruns export.
    p["export"].update({"formats": ["tflite_int8", "onnx"], "representative_images": 8})
    return p


@contextlib.contextmanager
def working_dir(path: Path):
    """Run stage code in ``path`` (its paths are relative to the repository root)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch) -> Path:
    """Run library code in an empty folder (paths are relative to the repo root)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tool_env() -> dict:
    """The environment of a user's shell: TensorFlow's log left to tlpipe's default."""
    env = quiet.user_environment(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "tlpipe tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@tlpipe.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "tlpipe tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@tlpipe.invalid")
    return env


class DvcRepo:
    """A real git+DVC repository holding this checkout's pipeline."""

    def __init__(self, root: Path):
        self.root = root

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            args, cwd=self.root, env=tool_env(), capture_output=True, text=True, timeout=900
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
                f"\n--- stderr\n{proc.stderr[-6000:]}"
            )
        return proc

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, check=check)

    def write_params(self, params: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)


def copy_dvc_config(root: Path) -> None:
    """This checkout's DVC config and plot templates (the offline plots page)."""
    for name in ("config", "offline_plots.html"):
        shutil.copy(REPO / ".dvc" / name, root / ".dvc" / name)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")


def new_dvc_repo(root: Path, params: dict) -> DvcRepo:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for folder in ("stages", "src"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data").mkdir(exist_ok=True)
    shutil.copy(REPO / "data" / "corrections.csv", root / "data" / "corrections.csv")
    repo = DvcRepo(root)
    repo.write_params(params)
    repo.run("git", "init", "-q")
    repo.dvc("init", "-q")
    copy_dvc_config(root)
    repo.commit("pipeline")  # DVCLive and `dvc exp` need a commit to compare with
    return repo


@pytest.fixture
def dvc_repo_factory(tmp_path):
    return lambda params, name="repo": new_dvc_repo(tmp_path / name, params)


needs_shared = pytest.mark.skipif(
    not (SHARED_KERAS / "datasets" / "cats_and_dogs_filtered.zip").is_file(),
    reason="needs the pre-seeded Keras cache in ../shared/keras",
)


def run_stage_code(p, *names: str):
    """Call stages' code in this process as their scripts in stages/ do, in order;
    return the last one's result."""
    from tlpipe import audit, evaluate, export, extract, fetch, finetune, scratch, split, train_head, trust

    calls = {
        "fetch": lambda: fetch.run(p.data),
        "split": lambda: split.run(p.split, p.seed, labels=p.data.labels),
        "extract": lambda: extract.run(
            p.extract, backbone=p.backbone, image_size=p.image_size, weights=p.weights, seed=p.seed,
            freeze_word=p.freeze, pooling=p.pooling,
        ),
        "train_head": lambda: train_head.run(p.head, seed=p.seed),
        "finetune": lambda: finetune.run(p.finetune, finetune_setup(p)),
        "trust": lambda: trust.run(p.trust, batch_size=p.evaluate.batch_size),
        "evaluate": lambda: evaluate.run(p.evaluate),
        "export": lambda: export.run(p.export, seed=p.seed),
        "audit": lambda: audit.run(p.audit, seed=p.seed),
        "scratch": lambda: scratch.run(p.scratch, image_size=p.image_size, seed=p.seed, top_k=p.evaluate.top_k),
    }
    result = None
    for name in names:
        result = calls[name]()
    return result


def finetune_setup(p):
    from tlpipe.finetune import BackboneChoice

    return BackboneChoice(backbone=p.backbone, image_size=p.image_size, weights=p.weights, freeze=p.freeze, seed=p.seed,
                          pooling=p.pooling)


def render_in_chromium(page: Path, profile: Path, screenshot: Path | None = None) -> str:
    """Open ``page`` in headless Chromium with networking off; return the DOM
    after its scripts ran (and save a screenshot if asked)."""
    no_network = ["unshare", "--net"] if os.geteuid() == 0 and shutil.which("unshare") else []
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # belt and braces: no name resolves
        f"--user-data-dir={profile}", "--virtual-time-budget=20000",
    ]
    url = page.resolve().as_uri()
    if screenshot is not None:
        subprocess.run([*no_network, "chromium", *flags, "--window-size=1400,1100",
                        f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    proc = subprocess.run([*no_network, "chromium", *flags, "--dump-dom", url],
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout
