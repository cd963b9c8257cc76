"""split: determinism, stratification, predefined splits, rejected files, odd formats."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tlpipe import images, paths
from tlpipe import split as split_module
from tlpipe.errors import TlpipeError
from tlpipe.params import SplitParams

from conftest import COLOURS, SHARED_KERAS, draw_image, make_class_folders

PARAMS = SplitParams(val_fraction=0.25, test_fraction=0.25, test_from_val=0.5)


def run_split(params=PARAMS, seed=42):
    return split_module.run(params, seed, paths.RAW)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_stratified_and_deterministic(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=20, classes=("red", "green", "blue"))
    first = run_split()
    snapshot = {s: paths.split_csv(s).read_text() for s in paths.SPLITS}
    run_split()
    assert {s: paths.split_csv(s).read_text() for s in paths.SPLITS} == snapshot
    for name in ("red", "green", "blue"):
        assert [sum(r.label == name for r in first.rows[s]) for s in ("train", "val", "test")] == [10, 5, 5]
    assert json.loads(paths.CLASSES.read_text()) == ["blue", "green", "red"]
    all_paths = [r.path for s in paths.SPLITS for r in first.rows[s]]
    assert len(all_paths) == len(set(all_paths)) == 60
    other_seed = split_module.run(PARAMS, 7, paths.RAW)
    assert other_seed.rows["test"] != first.rows["test"]
    metrics = json.loads(paths.DATA_REPORT.read_text())
    assert metrics["per_class"]["test"] == {"blue": 5, "green": 5, "red": 5}
    assert metrics["rejected"] == 0


def test_predefined_train_stays_train_and_test_comes_from_validation(in_tmp_cwd):
    make_class_folders(paths.RAW / "train", per_class=8)
    make_class_folders(paths.RAW / "validation", per_class=6)
    result = run_split()
    assert all(r.path.startswith("train/") for r in result.rows["train"])
    assert len(result.rows["train"]) == 16
    for s in ("val", "test"):
        assert all(r.path.startswith("validation/") for r in result.rows[s])
        assert sorted({r.label for r in result.rows[s]}) == ["blue", "red"]
    assert len(result.rows["test"]) == 6 and len(result.rows["val"]) == 6


def test_predefined_test_folder_is_kept_and_val_carved_from_train(in_tmp_cwd):
    make_class_folders(paths.RAW / "train", per_class=8)
    make_class_folders(paths.RAW / "test", per_class=3)
    result = run_split()
    assert all(r.path.startswith("test/") for r in result.rows["test"])
    assert all(r.path.startswith("train/") for r in result.rows["val"])
    assert len(result.rows["val"]) == 4  # 25 % of 8, per class


def test_mixing_split_and_class_folders_is_an_error(in_tmp_cwd):
    make_class_folders(paths.RAW / "train", per_class=4)
    make_class_folders(paths.RAW, per_class=4, classes=("green",))
    with pytest.raises(TlpipeError, match="mixes split folders"):
        run_split()


def test_bad_files_are_rejected_with_reasons_and_hidden_ones_ignored(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=8)
    red = paths.RAW / "red"
    (red / "empty.jpg").write_bytes(b"")
    (red / "notes.jpg").write_text("this is not a jpeg")
    good = (red / "red_000.jpg").read_bytes()
    (red / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (red / ".DS_Store").write_bytes(b"\0\1")
    (red / "._red_000.jpg").write_bytes(b"\0\1")
    (paths.RAW / "README.txt").write_text("about this data")
    nested = red / "more" / "deeper"
    nested.mkdir(parents=True)
    draw_image(COLOURS["red"], 99).save(nested / "nested image ü.png")
    result = run_split()
    rejected = dict(result.rejected)
    assert rejected["red/empty.jpg"] == "empty file"
    assert rejected["red/notes.jpg"].startswith("not an image")
    assert rejected["red/truncated.jpg"].startswith("cannot decode")
    assert rejected["README.txt"] == "not inside a class folder"
    assert len(rejected) == 4
    used = {r.path for s in paths.SPLITS for r in result.rows[s]}
    assert "red/more/deeper/nested image ü.png" in used
    assert not any(".DS_Store" in p or "/._" in p for p in used | set(rejected))
    assert {row["path"] for row in read_csv(paths.REJECTED)} == set(rejected)


def test_decompression_bomb_is_rejected(in_tmp_cwd, monkeypatch):
    make_class_folders(paths.RAW, per_class=6)
    Image.new("RGB", (400, 300)).save(paths.RAW / "red" / "huge.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    rejected = dict(run_split().rejected)
    assert rejected["red/huge.png"].startswith("too large")


def test_single_class_and_empty_class_are_errors(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=6, classes=("red",))
    with pytest.raises(TlpipeError, match="single class"):
        run_split()
    (paths.RAW / "blue").mkdir()
    (paths.RAW / "blue" / "broken.jpg").write_text("no")
    with pytest.raises(TlpipeError, match="Class folder 'blue' has no valid image"):
        run_split()


def test_too_small_class_is_an_error(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=6)
    for f in sorted((paths.RAW / "blue").iterdir())[2:]:
        f.unlink()
    with pytest.raises(TlpipeError, match="Class 'blue' has 2 valid images, too few"):
        run_split()


@pytest.mark.skipif(
    not (SHARED_KERAS / "datasets" / "sign_language_digits.zip").is_file(),
    reason="needs the pre-seeded Keras cache in ../shared/keras",
)
def test_real_ten_class_archive_without_split_folders(in_tmp_cwd):
    """The shared sign-language digits archive: 10 class folders, no predefined
    split, real JPEGs (a few EXIF-rotated, read by Pillow)."""
    from tlpipe import fetch
    from tlpipe.params import DataParams

    fetch.run(DataParams(str(SHARED_KERAS / "datasets" / "sign_language_digits.zip"), None))
    params = SplitParams(val_fraction=0.1, test_fraction=0.1, test_from_val=0.5)
    result = run_split(params)
    assert result.classes == [str(d) for d in range(10)] and not result.rejected
    sizes = {s: len(rows) for s, rows in result.rows.items()}
    assert sum(sizes.values()) == 2062
    for label in result.classes:
        per_split = {s: sum(r.label == label for r in rows) for s, rows in result.rows.items()}
        total = sum(per_split.values())
        assert per_split["test"] == round(total * params.test_fraction)
        assert per_split["val"] >= 1 and per_split["train"] > 0.75 * total
    assert {r.decoder for rows in result.rows.values() for r in rows} == {"tf", "pil"}


def test_image_hashes_list_every_split_image_as_sha256sum_checks_them(in_tmp_cwd):
    """data/split/images.sha256 is what the stages after split depend on in
    place of data/raw: every image of the splits and its bytes' SHA-256, and
    nothing else (a rejected file is not there), in sha256sum's format."""
    import hashlib
    import shutil
    import subprocess

    make_class_folders(paths.RAW, per_class=8)
    odd = paths.RAW / "red" / "back\\slash.jpg"  # sha256sum escapes such a name
    (paths.RAW / "red" / "red_007.jpg").rename(odd)
    (paths.RAW / "blue" / "broken.jpg").write_bytes(b"not an image")
    result = run_split()
    expected = {r.path: hashlib.sha256((paths.RAW / r.path).read_bytes()).hexdigest()
                for s in paths.SPLITS for r in result.rows[s]}
    listed = {}
    for line in paths.image_hashes_file().read_text().splitlines():
        digest, name = line.removeprefix("\\").split("  ", 1)
        listed[name.replace("\\\\", "\\") if line.startswith("\\") else name] = digest
    assert listed == expected and len(listed) == 16 and "red/back\\slash.jpg" in listed
    if shutil.which("sha256sum"):  # the same text sha256sum writes, and it checks every image
        ours = paths.image_hashes_file().read_text()
        assert subprocess.run(["sha256sum", *sorted(expected)], cwd=paths.RAW, capture_output=True,
                              text=True).stdout == ours
        manifest = paths.image_hashes_file().resolve()
        check = subprocess.run(["sha256sum", "--check", "--strict", manifest], cwd=paths.RAW, capture_output=True,
                               text=True)
        assert check.returncode == 0 and check.stdout.count(": OK") == 16, check.stdout + check.stderr


# ---------------------------------------------------------------- label hygiene


def copy_bytes(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())


def test_same_bytes_in_two_classes_is_a_label_conflict(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=12)
    copy_bytes(paths.RAW / "red" / "red_000.jpg", paths.RAW / "blue" / "mislabelled.jpg")
    result = run_split()
    used = {r.path for s in paths.SPLITS for r in result.rows[s]}
    assert "red/red_000.jpg" not in used and "blue/mislabelled.jpg" not in used
    rejected = dict(result.rejected)
    assert rejected["blue/mislabelled.jpg"].startswith("label conflict: the same bytes are in classes blue, red")
    assert "blue/mislabelled.jpg" in rejected["red/red_000.jpg"]
    metrics = json.loads(paths.DATA_REPORT.read_text())
    assert metrics["label_conflicts"] == 2 and metrics["duplicates"] == 0 and metrics["rejected"] == 2


def test_identical_files_in_one_class_never_straddle_splits(in_tmp_cwd):
    """20 copied pairs: each pair keeps one file, so no copy can land in train
    and another in test (the issue saw 5 of 20 pairs do that)."""
    make_class_folders(paths.RAW, per_class=30)
    for i in range(10):
        for name in ("red", "blue"):
            copy_bytes(paths.RAW / name / f"{name}_{i:03d}.jpg", paths.RAW / name / "copies" / f"copy_{i}.jpg")
    result = run_split()
    where = {r.path: s for s in paths.SPLITS for r in result.rows[s]}
    for i in range(10):
        for name in ("red", "blue"):
            kept = [p for p in (f"{name}/{name}_{i:03d}.jpg", f"{name}/copies/copy_{i}.jpg") if p in where]
            assert len(kept) == 1, kept
    assert result.duplicates == 20
    reasons = [r for _, r in result.rejected]
    assert len(reasons) == 20 and all(r.startswith("duplicate of ") for r in reasons)
    assert json.loads(paths.DATA_REPORT.read_text())["duplicates"] == 20


def test_duplicate_across_predefined_split_folders_is_dropped(in_tmp_cwd):
    make_class_folders(paths.RAW / "train", per_class=8)
    make_class_folders(paths.RAW / "validation", per_class=6)
    copy_bytes(paths.RAW / "train" / "red" / "red_001.jpg", paths.RAW / "validation" / "red" / "leak.jpg")
    result = run_split()
    assert dict(result.rejected)["validation/red/leak.jpg"] == "duplicate of train/red/red_001.jpg (same bytes)"


def test_class_folders_differing_only_in_case_stop_the_stage(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=6)
    (paths.RAW / "red").rename(paths.RAW / "Cat")
    (paths.RAW / "blue").rename(paths.RAW / "cat")
    with pytest.raises(TlpipeError, match=r"Class folders 'Cat', 'cat' in data/raw differ only in case"):
        run_split()


def test_jpeg_that_pillow_reads_but_tensorflow_rejects_is_rejected_by_name(in_tmp_cwd):
    """Cut before its end marker: Pillow decodes it with a warning, TensorFlow's
    decoder (the one extract uses for plain JPEGs) refuses it. Split says so,
    so extraction never meets it."""
    make_class_folders(paths.RAW, per_class=8)
    good = (paths.RAW / "red" / "red_000.jpg").read_bytes()
    (paths.RAW / "red" / "broken.jpg").write_bytes(good[:-2] + b"\x00" * 7)
    assert images.inspect(paths.RAW / "red" / "broken.jpg").ok  # Pillow alone would let it through
    result = run_split()
    reason = dict(result.rejected)["red/broken.jpg"]
    assert reason.startswith("cannot decode with TensorFlow: ") and "{{" not in reason


def test_dangling_symlink_in_a_folder_source_reaches_rejected_csv(in_tmp_cwd, tmp_path):
    from tlpipe import fetch
    from tlpipe.params import DataParams

    source = make_class_folders(tmp_path / "source", per_class=8)
    (source / "red" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    fetch.run(DataParams(str(source), None))
    run_split()
    rows = read_csv(paths.REJECTED)
    assert [r["path"] for r in rows] == ["red/gone.jpg"] and "does not exist" in rows[0]["reason"]
    assert json.loads(paths.DATA_REPORT.read_text())["rejected"] == 1


def labelled_source(raw, rows, header="file_name,label"):
    """One flat folder of images and a CSV naming their labels (Kaggle's and
    Hugging Face's imagefolder shape)."""
    (raw / "images").mkdir(parents=True, exist_ok=True)
    lines = [header]
    for i, (colour, *rest) in enumerate(rows):
        name = f"images/{i:03d}.jpg"
        draw_image(COLOURS[colour], seed=5000 + i).save(raw / name)
        lines.append(",".join([name, colour, *rest]))
    (raw / "labels.csv").write_text("\n".join(lines) + "\n")


def test_labels_csv_gives_the_classes_and_ignores_unlisted_images(in_tmp_cwd):
    labelled_source(paths.RAW, [("red",)] * 12 + [("blue",)] * 12)
    draw_image(COLOURS["green"], seed=1).save(paths.RAW / "images" / "unlisted.jpg")
    with open(paths.RAW / "labels.csv", "a") as f:
        f.write("images/gone.jpg,red\n")
    result = split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv")
    assert result.classes == ["blue", "red"]
    for name in ("red", "blue"):
        assert [sum(r.label == name for r in result.rows[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert dict(result.rejected) == {"images/gone.jpg": "listed in labels.csv (row 26) but not in the source"}
    metrics = json.loads(paths.DATA_REPORT.read_text())
    assert metrics["unlisted"] == 1 and metrics["rejected"] == 1


def test_labels_csv_split_column_keeps_a_predefined_split(in_tmp_cwd):
    rows = [(c, s) for c in ("red", "blue") for s in ["train"] * 8 + ["validation"] * 4 + ["test"] * 3]
    labelled_source(paths.RAW, rows, header="file_name,label,split")
    result = split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv")
    assert [len(result.rows[s]) for s in ("train", "val", "test")] == [16, 8, 6]
    listed = {line.split(",")[0]: line.split(",")[2] for line in (paths.RAW / "labels.csv").read_text().split()[1:]}
    assert all(listed[r.path] == "test" for r in result.rows["test"])


def test_labels_csv_still_finds_duplicates_and_conflicts(in_tmp_cwd):
    labelled_source(paths.RAW, [("red",)] * 12 + [("blue",)] * 12)
    with open(paths.RAW / "labels.csv", "a") as f:
        f.write("images/000.jpg,blue\n")  # the same file, another label
    copy_bytes(paths.RAW / "images" / "001.jpg", paths.RAW / "images" / "copy.jpg")
    with open(paths.RAW / "labels.csv", "a") as f:
        f.write("images/copy.jpg,blue\n")  # the same bytes as a red image
    result = split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv")
    rejected = dict(result.rejected)
    assert rejected["images/000.jpg"] == "listed in labels.csv more than once, with different labels or splits"
    assert rejected["images/copy.jpg"].startswith("label conflict: the same bytes are in classes blue, red")


@pytest.mark.parametrize("content, message", [
    ("name,class\nimages/000.jpg,red\n", "labels.csv must have a header row with the columns file_name and label"),
    ("file_name,label\nimages/000.jpg,\n", "labels.csv row 2 needs both a file_name and a label"),
    ("file_name,label,split\nimages/000.jpg,red,dev\n", "labels.csv row 2: split 'dev' must be one of train"),
    ("file_name,label\n../outside.jpg,red\n", "file_name '../outside.jpg' must be relative to the source's root"),
])
def test_a_bad_labels_csv_is_one_line_naming_file_and_row(in_tmp_cwd, content, message):
    labelled_source(paths.RAW, [("red",)] * 2)
    (paths.RAW / "labels.csv").write_text(content)
    with pytest.raises(TlpipeError) as err:
        split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv")
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TlpipeError, match="data.labels names 'other.csv', which is not in the source"):
        split_module.run(PARAMS, 42, paths.RAW, labels="other.csv")


def test_exp_run_data_labels_reads_the_csv_through_dvc(tmp_path, dvc_repo_factory, raw_params):
    """The docs' `dvc exp run -S data.labels=labels.csv`, typed as a user
    types it, on a folder of images with a CSV of labels."""
    from conftest import tiny_params

    source = tmp_path / "kaggle"
    labelled_source(source, [("red",)] * 12 + [("blue",)] * 12)
    repo = dvc_repo_factory(tiny_params(raw_params, source))
    result = repo.dvc("exp", "run", "-S", "data.labels=labels.csv", "split")
    assert "Running stage 'split'" in result.stdout
    metrics = json.loads((repo.root / "reports/data.json").read_text())
    assert metrics["classes"] == 2 and sum(metrics["images"].values()) == 24 and metrics["unlisted"] == 0
    classes = json.loads((repo.root / "data/split/classes.json").read_text())
    assert classes == ["blue", "red"]


# ---------------------------------------------------------------- data.corrections


def corrections_file(lines, name="corrections.csv"):
    path = paths.RAW.parent / name
    path.write_text("\n".join(["file_name,label", *lines]) + "\n")
    return path


def test_corrections_relabel_and_exclude_without_moving_any_other_image(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=16)
    before = run_split()
    where = {r.path: s for s in paths.SPLITS for r in before.rows[s]}
    relabelled, dropped = before.rows["train"][0].path, before.rows["test"][0].path
    result = split_module.run(PARAMS, 42, paths.RAW, corrections=corrections_file(
        [f"{relabelled},{'blue' if relabelled.startswith('red') else 'red'}", f"{dropped},exclude"]))
    after = {r.path: (s, r.label) for s in paths.SPLITS for r in result.rows[s]}
    assert dropped not in after and after[relabelled][0] == "train"
    assert after[relabelled][1] != relabelled.split("/")[0]
    assert {p: s for p, (s, _) in after.items()} == {p: s for p, s in where.items() if p != dropped}
    metrics = json.loads(paths.DATA_REPORT.read_text())
    assert (metrics["corrected"], metrics["excluded"], metrics["rejected"]) == (1, 1, 0)


def test_a_correction_that_keeps_the_label_counts_nothing(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=12)
    result = split_module.run(PARAMS, 42, paths.RAW, corrections=corrections_file(["red/red_000.jpg,red"]))
    assert (result.corrected, result.excluded) == (0, 0)


def test_excluding_one_copy_resolves_a_label_conflict(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=12)
    copy_bytes(paths.RAW / "red" / "red_000.jpg", paths.RAW / "blue" / "mislabelled.jpg")
    result = split_module.run(PARAMS, 42, paths.RAW, corrections=corrections_file(["blue/mislabelled.jpg,exclude"]))
    used = {r.path for s in paths.SPLITS for r in result.rows[s]}
    assert "red/red_000.jpg" in used and "blue/mislabelled.jpg" not in used
    assert result.label_conflicts == 0 and not result.rejected


@pytest.mark.parametrize("lines, message", [
    (["red/nope.jpg,red"], "corrections.csv row 2: file_name 'red/nope.jpg' is not an image of the source"),
    (["red/red_000.jpg,green"], "corrections.csv row 2: label 'green' must be a class (blue, red) or 'exclude'"),
    (["red/red_000.jpg,blue", "red/red_000.jpg,exclude"], "row 3: 'red/red_000.jpg' is corrected twice, to 'blue'"),
])
def test_a_bad_corrections_csv_is_one_line_naming_file_and_row(in_tmp_cwd, lines, message):
    make_class_folders(paths.RAW, per_class=12)
    with pytest.raises(TlpipeError) as err:
        split_module.run(PARAMS, 42, paths.RAW, corrections=corrections_file(lines))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not paths.SPLIT.exists()  # nothing written


def test_corrections_without_header_or_file_are_refused(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=12)
    bad = paths.RAW.parent / "fixes.csv"
    bad.write_text("path,class\nred/red_000.jpg,blue\n")
    with pytest.raises(TlpipeError, match="fixes.csv must have a header row with the columns file_name and label"):
        split_module.run(PARAMS, 42, paths.RAW, corrections=bad)
    with pytest.raises(TlpipeError, match="data.corrections names 'data/gone.csv', which does not exist"):
        split_module.run(PARAMS, 42, paths.RAW, corrections=paths.RAW.parent / "gone.csv")


def test_corrections_that_empty_a_class_in_a_split_stop_the_stage(in_tmp_cwd):
    make_class_folders(paths.RAW, per_class=8)
    before = run_split()
    red_test = [r.path for r in before.rows["test"] if r.label == "red"]
    with pytest.raises(TlpipeError, match="After data.corrections, class 'red' has no image in the test split"):
        split_module.run(PARAMS, 42, paths.RAW, corrections=corrections_file([f"{p},blue" for p in red_test]))


def test_the_readme_corrections_loop_through_dvc(tmp_path, dvc_repo_factory, raw_params):
    """The docs' loop as a user types it: a row from label_issues.csv's
    file_name into data/corrections.csv, then `dvc repro`; and
    `dvc exp run -S data.corrections=...` for a second file."""
    from conftest import tiny_params

    repo = dvc_repo_factory(tiny_params(raw_params, make_class_folders(tmp_path / "src", per_class=12)))
    repo.dvc("repro", "split")
    row = read_csv(repo.root / "data/split/train.csv")[0]
    other = "blue" if row["label"] == "red" else "red"
    with open(repo.root / "data/corrections.csv", "a") as f:
        f.write(f"{row['path']},{other}\n")
    assert "data/corrections.csv" in repo.dvc("status", "split").stdout
    assert "Running stage 'split'" in repo.dvc("repro", "split").stdout
    metrics = json.loads((repo.root / "reports/data.json").read_text())
    assert (metrics["corrected"], metrics["excluded"]) == (1, 0)
    assert {r["path"]: r["label"] for r in read_csv(repo.root / "data/split/train.csv")}[row["path"]] == other
    (repo.root / "data/reviewed.csv").write_text(f"file_name,label\n{row['path']},exclude\n")
    repo.dvc("exp", "run", "-S", "data.corrections=data/reviewed.csv", "split")
    metrics = json.loads((repo.root / "reports/data.json").read_text())
    assert (metrics["corrected"], metrics["excluded"]) == (0, 1)


# ---------------------------------------------------------------- multi-label: a labels column


def mosaic(colours, seed: int) -> Image.Image:
    """Quadrants of the given colours (grey elsewhere): an image that shows several things."""
    rng = np.random.default_rng(seed)  # a grey background of its own: no two mosaics share their bytes
    img = Image.fromarray(rng.integers(100, 156, (48, 48, 3), dtype=np.uint8), "RGB")
    for quadrant, colour in enumerate(colours):
        tile = draw_image(COLOURS[colour], seed=seed * 4 + quadrant, size=(24, 24))
        img.paste(tile, (24 * (quadrant % 2), 24 * (quadrant // 2)))
    return img


def label_set_source(raw, sets, splits=None, delimiter=" "):
    """Mosaics and a labels.csv with a labels column (and optionally split)."""
    (raw / "images").mkdir(parents=True, exist_ok=True)
    lines = ["file_name,labels" + (",split" if splits else "")]
    for i, labels in enumerate(sets):
        name = f"images/{i:03d}.jpg"
        mosaic(labels, seed=7000 + i).save(raw / name)
        lines.append(",".join([name, delimiter.join(labels), *([splits[i]] if splits else [])]))
    (raw / "labels.csv").write_text("\n".join(lines) + "\n")


SETS = [("red",), ("blue",), ("red", "blue"), ("green",), ("red", "green"), ()] * 8


def test_labels_column_makes_a_stratified_multi_label_split(in_tmp_cwd):
    label_set_source(paths.RAW, SETS)
    result = split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv")
    assert result.classes == ["blue", "green", "red"]
    assert json.loads(paths.task_file().read_text()) == {"multi_label": True, "delimiter": " "}
    rows = {s: read_csv(paths.split_csv(s)) for s in ("train", "val", "test")}
    assert list(rows["train"][0]) == ["path", "labels", "decoder"]
    for split in rows:  # every label in every split, each near its share (iterative stratification)
        for name in ("red", "blue", "green"):
            total = sum(name in labels for labels in SETS)
            share = {"train": 1 - PARAMS.val_fraction - PARAMS.test_fraction, "val": PARAMS.val_fraction,
                     "test": PARAMS.test_fraction}[split]
            assert abs(sum(name in r["labels"].split() for r in rows[split]) - share * total) <= 1.0, (split, name)
    assert any(r["labels"] == "" for r in rows["train"])  # an image of none of the labels is kept
    assert any(r["labels"] == "blue red" for r in rows["train"])
    report = json.loads(paths.DATA_REPORT.read_text())
    assert report["multi_label"] is True and report["per_class"]["train"]["red"] == sum(
        "red" in r["labels"].split() for r in rows["train"])
    from tlpipe.artifacts import label_indices, read_classes, read_split

    y = label_indices(read_split("train"), read_classes())
    assert y.shape == (len(rows["train"]), 3) and y.dtype == "uint8"


def test_label_sets_keep_a_predefined_split_and_a_delimiter(in_tmp_cwd):
    sets = [("red",), ("blue",), ("red", "blue")] * 6
    splits = (["train"] * 3 + ["validation"] * 3 + ["test"] * 3) * 2
    label_set_source(paths.RAW, sets, splits, delimiter=";")
    result = split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv", delimiter=";")
    assert [len(result.rows[s]) for s in ("train", "val", "test")] == [6, 6, 6]
    assert {r.label for r in result.rows["test"]} == {"red", "blue", "blue;red"}


def test_label_sets_with_the_same_bytes_and_other_labels_are_a_conflict(in_tmp_cwd):
    label_set_source(paths.RAW, SETS)
    copy_bytes(paths.RAW / "images" / "002.jpg", paths.RAW / "images" / "copy.jpg")
    with open(paths.RAW / "labels.csv", "a") as f:
        f.write("images/copy.jpg,red\n")  # 002 is "red blue"
    result = split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv")
    rejected = dict(result.rejected)
    assert rejected["images/copy.jpg"].startswith("label conflict") and "002.jpg (blue red)" in rejected[
        "images/copy.jpg"]
    assert result.label_conflicts == 2


@pytest.mark.parametrize("make, message", [
    (lambda raw: (raw / "labels.csv").write_text("file_name,label,labels\nimages/000.jpg,red,red\n"),
     "labels.csv has both a label and a labels column"),
    (lambda raw: label_set_source(raw, [("red",), ("blue",)] * 6 + [("green",)] * 2),
     "Label 'green' has no image in the"),
    (lambda raw: label_set_source(raw, [("red",), ("blue",), ("red", "blue")] * 3 + [("green",)],
                                  ["train"] * 3 + ["validation"] * 3 + ["test"] * 4),
     "Label 'green' has no image in the train and val splits (train 0, val 0, test 1)"),
    (lambda raw: (label_set_source(raw, [("red",), ("blue",)] * 6), mosaic(("red", "blue"), 1).save(raw / "x.jpg"),
                  open(raw / "labels.csv", "a").write("x.jpg,red;blue\n")),
     "looks like 'red', 'blue' joined by ';', but data.label_delimiter is ' '"),
])
def test_a_bad_multi_label_csv_is_one_line(in_tmp_cwd, make, message):
    (paths.RAW / "images").mkdir(parents=True)
    make(paths.RAW)
    with pytest.raises(TlpipeError) as err:
        split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_multi_label_corrections_replace_an_image_s_label_set(in_tmp_cwd):
    label_set_source(paths.RAW, SETS)
    fixes = in_tmp_cwd / "corrections.csv"
    fixes.write_text("file_name,label\nimages/000.jpg,red green\nimages/001.jpg,exclude\n")
    result = split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv", corrections=fixes)
    fixed = {r.path: r.labels for rows in result.rows.values() for r in rows}
    assert fixed["images/000.jpg"] == ("green", "red") and "images/001.jpg" not in fixed
    assert (result.corrected, result.excluded) == (1, 1)
    fixes.write_text("file_name,label\nimages/000.jpg,red purple\n")
    with pytest.raises(TlpipeError, match="row 2: label 'purple' must be a label"):
        split_module.run(PARAMS, 42, paths.RAW, labels="labels.csv", corrections=fixes)
