"""The audit stage finds planted duplicates, near-duplicates and swapped labels
in a folder data set made on the fly, through the real split and extract code."""

import csv

import numpy as np
import pytest
from PIL import Image

from tlpipe import audit, params, paths

from conftest import needs_shared, run_stage_code, tiny_params

NEAR_COPIES = [("red", 3), ("green", 4), ("blue", 5), ("red", 7), ("green", 9), ("blue", 11)]
SWAPPED = [("red", 12), ("red", 13), ("green", 14), ("blue", 15), ("blue", 16)]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def busy_image(colour, seed: int, size=(64, 56)) -> Image.Image:
    """A class-coloured background under several random shapes of any colour:
    images that differ from each other much more than the class colour says."""
    from PIL import ImageDraw

    from conftest import COLOURS

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, COLOURS[colour])
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(0, size[0] - 8), rng.integers(0, size[1] - 8)
        w, h = rng.integers(6, 18, size=2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def plant(raw):
    """Near-duplicates (a resized, re-encoded copy, under another name), exact
    copies, and images moved into another class's folder (wrong labels)."""
    for ci, name in enumerate(("red", "green", "blue")):
        (raw / name).mkdir(parents=True)
        for i in range(24):
            busy_image(name, 100 * ci + i).save(raw / name / f"{name}_{i:03d}.jpg", "JPEG", quality=90)
    for name, i in NEAR_COPIES:
        img = Image.open(raw / name / f"{name}_{i:03d}.jpg")
        img.resize((72, 63), Image.BICUBIC).save(raw / name / f"copy_of_{i:03d}.jpg", "JPEG", quality=70)
    for name, i in [("red", 20), ("blue", 21)]:
        (raw / name / f"exact_{i}.jpg").write_bytes((raw / name / f"{name}_{i:03d}.jpg").read_bytes())
    moved = {}
    for name, i in SWAPPED:
        target = {"red": "blue", "green": "red", "blue": "green"}[name]
        src = raw / name / f"{name}_{i:03d}.jpg"
        dst = raw / target / f"moved_{name}_{i:03d}.jpg"
        src.rename(dst)
        moved[f"{target}/{dst.name}"] = name
    return moved


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    import yaml

    from conftest import REPO, working_dir

    with working_dir(tmp_path_factory.mktemp("audit")) as root:
        moved = plant(paths.RAW)
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        # VGG16 at random init keeps images apart (no BatchNorm to flatten it)
        p = params.parse(tiny_params(raw, paths.RAW, backbone="vgg16", image_size=48))
        p = p.with_overrides(audit=params.AuditParams(near_duplicate_similarity=0.99, folds=5, gallery=6))
        metrics = run_stage_code(p, "split", "extract", "audit")
        yield root, moved, metrics


def test_near_duplicates_are_found(audited):
    root, _, metrics = audited
    pairs = read_csv(root / paths.AUDIT_PLOTS / "duplicates.csv")
    near = {frozenset((r["path_a"], r["path_b"])) for r in pairs if r["split_b"] != "rejected"}
    planted = {frozenset((f"{n}/{n}_{i:03d}.jpg", f"{n}/copy_of_{i:03d}.jpg")) for n, i in NEAR_COPIES}
    recall = len(planted & near) / len(planted)
    assert recall == 1.0, f"near-duplicate recall {recall:.2f}"
    # precision: the planted pairs are the closest pairs of all
    top = sorted((r for r in pairs if r["split_b"] != "rejected"), key=lambda r: -float(r["similarity"]))
    assert {frozenset((r["path_a"], r["path_b"])) for r in top[: len(planted)]} == planted
    cross = sum(r["split_a"] != r["split_b"] for r in pairs if r["split_b"] != "rejected")
    assert metrics["duplicates"]["cross_split"] == cross
    assert metrics["duplicates"]["near"] == len(near)


def test_exact_copies_removed_by_split_are_listed(audited):
    root, _, metrics = audited
    pairs = read_csv(root / paths.AUDIT_PLOTS / "duplicates.csv")
    exact = {frozenset((r["path_a"], r["path_b"])) for r in pairs if r["split_b"] == "rejected"}
    assert exact == {frozenset(("blue/blue_021.jpg", "blue/exact_21.jpg")), frozenset(("red/red_020.jpg", "red/exact_20.jpg"))}
    assert metrics["duplicates"]["exact"] == 2


def test_swapped_labels_are_the_most_suspicious(audited):
    root, moved, metrics = audited
    issues = read_csv(root / paths.AUDIT_PLOTS / "label_issues.csv")
    found = {r["file_name"] for r in issues}
    recall = len(found & set(moved)) / len(moved)
    assert recall == 1.0, f"label-error recall {recall:.2f}"
    # ranked first: at most one unplanted image among them (random-weight features here)
    top = issues[: len(moved) + 1]
    assert set(moved) <= {r["file_name"] for r in top}
    for r in top:
        if r["file_name"] in moved:
            assert r["suggested"] == moved[r["file_name"]] and float(r["score"]) < 0.5
    scores = [float(r["score"]) for r in issues]
    assert scores == sorted(scores)  # most suspicious (lowest label quality) first
    assert metrics["label_issues"] == len(issues)


def test_pictures_are_written(audited):
    root, _, _ = audited
    for name in ("duplicates.png", "label_issues.png"):
        with Image.open(root / paths.AUDIT_PLOTS / name) as img:
            assert img.size[0] > 300 and img.size[1] > 200


def test_near_duplicates_by_hand():
    x = np.array([[1, 0], [0.999, 0.04], [0, 1], [-1, 0]], dtype=np.float32)
    pairs, total, _ = audit.near_duplicates(x, 0.99)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)] and total == 1
    assert audit.near_duplicates(x, 0.99, block=1)[:2] == (pairs, total)


def test_when_every_pair_is_near_the_closest_are_listed_and_all_are_counted():
    """A backbone that cannot tell 3,000 images apart: 4.5 million near pairs,
    counted; the MAX_PAIRS closest listed, closest first, whatever the block."""
    rng = np.random.default_rng(0)
    x = 1 + 1e-3 * rng.normal(size=(3000, 8)).astype(np.float32)
    pairs, total, _ = audit.near_duplicates(x, 0.5)
    assert total == 3000 * 2999 // 2 and len(pairs) == audit.MAX_PAIRS
    sims = [s for _, _, s in pairs]
    assert sims == sorted(sims, reverse=True) and all(i < j for i, j, _ in pairs)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    every = (unit @ unit.T)[np.triu_indices(3000, k=1)]
    assert sims[-1] >= np.sort(every)[-audit.MAX_PAIRS] - 1e-6  # none closer was left out
    other, other_total, _ = audit.near_duplicates(x, 0.5, block=700)  # another block: the same up to float rounding
    assert other_total == total and np.allclose([s for _, _, s in other], sims, atol=1e-6)


def test_pairs_across_splits_and_labels_are_counted_over_all_near_pairs_not_the_listed():
    """Many more near pairs than are listed: the counts across groups are of
    all of them (the listed closest pairs alone would undercount a leak),
    whatever the block."""
    n = 1500
    x = np.ones((n, 8), np.float16)  # every pair near: 1,124,250 of them, MAX_PAIRS listed
    split = np.arange(n) % 3  # train, val, test in turn
    label = (np.arange(n) < 100).astype(np.int64)  # 100 of one class, 1,400 of the other
    found = audit.near_duplicates(x, 0.5, groups={"split": split, "label": label})
    assert found.total == n * (n - 1) // 2 and len(found.pairs) == audit.MAX_PAIRS
    assert found.across == {"split": found.total - 3 * (500 * 499 // 2), "label": 100 * 1400}
    assert audit.near_duplicates(x, 0.5, block=700, groups={"split": split, "label": label}).across == found.across
    listed_across = sum(split[i] != split[j] for i, j, _ in found.pairs)
    assert listed_across < found.across["split"]


def test_near_duplicate_search_memory_is_a_tiles_whatever_the_number_of_images():
    import tracemalloc

    from tlpipe.similarity import TILE_ROWS

    rng = np.random.default_rng(0)
    peaks = []
    for n in (2 * TILE_ROWS, 6 * TILE_ROWS):
        x = rng.normal(size=(n, 256)).astype(np.float16)  # a float32 copy of it would show
        tracemalloc.start()
        audit.near_duplicates(x, 0.999)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.1 * peaks[0], peaks


def test_equally_near_pairs_are_listed_in_index_order_within_a_tiles_memory():
    """Every image the same (a backbone that cannot tell them apart): every
    pair ties, the first MAX_PAIRS by index are listed whatever the tile, and
    a tile keeps MAX_PAIRS of its millions of ties, not all of them."""
    import tracemalloc

    from tlpipe.similarity import TILE_ROWS

    n = 2 * TILE_ROWS
    x = np.ones((n, 8), np.float16)
    tracemalloc.start()
    pairs, total, _ = audit.near_duplicates(x, 0.5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    first = [(i, j) for i in range(3) for j in range(i + 1, n)][: audit.MAX_PAIRS]
    assert total == n * (n - 1) // 2 and [(i, j) for i, j, _ in pairs] == first
    assert audit.near_duplicates(x, 0.5, block=700)[:2] == (pairs, total)
    assert peak < 4 * TILE_ROWS**2 * 4, peak  # four tiles of float32 similarities


def test_out_of_fold_probabilities_from_float16_match_a_standardised_pipeline_per_fold():
    """The folds' statistics gathered a chunk at a time, from the stored float16
    features: the same probabilities as scikit-learn's pipeline on float32 copies."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2 * audit.CHUNK_ROWS + 300)
    x = (rng.normal(size=(len(y), 6)) + y[:, None]).astype(np.float16)
    probs = audit.out_of_fold_probabilities(x, y, 3, 5, seed=1)
    expected = np.zeros_like(probs)
    for fit, held in StratifiedKFold(5, shuffle=True, random_state=1).split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        model.fit(x[fit].astype(np.float32), y[fit])
        expected[held] = model.predict_proba(x[held].astype(np.float32))
    assert np.allclose(probs, expected, atol=1e-4)


def test_auto_threshold_by_hand():
    """Copies close to their originals, distinct images apart: the threshold
    finds the copies; a backbone that cannot tell them apart gets a threshold
    above its distinct pairs instead."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20, 16))
    copies_of = np.repeat(np.arange(10), 3)
    copies = train[copies_of] + rng.normal(scale=0.05, size=(30, 16))
    threshold, calibration = audit.calibrated_similarity(train, copies, copies_of)
    assert calibration["copies_found"] >= 0.95 and calibration["distinct_pairs_above"] == 0
    assert 0.9 < threshold < 1
    flat = np.ones((20, 16)) + rng.normal(scale=0.01, size=(20, 16))  # every image alike
    threshold, calibration = audit.calibrated_similarity(flat, flat[copies_of], copies_of)
    assert calibration["distinct_pairs_above"] <= 1  # the top 0.1 % of 45 pairs at most


@needs_shared
@pytest.mark.parametrize("folder", ["train", "validation"])
def test_auto_threshold_finds_real_copies_without_false_pairs_on_cats_and_dogs(tmp_path, folder):
    """Two half-size re-encoded copies planted among 40 real cat and dog photos
    (train's, and held-out validation photos: where the features' threshold,
    fitted on so few images, missed both), the default backbone with real
    ImageNet weights: both found, by the perceptual hash at least, and nothing else."""
    import zipfile

    import yaml

    from conftest import REPO, SHARED_KERAS, working_dir

    source = tmp_path / "photos"
    with zipfile.ZipFile(SHARED_KERAS / "datasets" / "cats_and_dogs_filtered.zip") as z:
        for animal in ("cat", "dog"):
            (source / f"{animal}s").mkdir(parents=True)
            first = 0 if folder == "train" else 2000  # validation's photos are numbered from 2000
            for i in range(first, first + 20):
                name = f"{animal}.{i}.jpg"
                (source / f"{animal}s" / name).write_bytes(
                    z.read(f"cats_and_dogs_filtered/{folder}/{animal}s/{name}"))
    planted = {}
    for animal, i in (("cat", first + 3), ("dog", first + 7)):
        original = source / f"{animal}s" / f"{animal}.{i}.jpg"
        img = Image.open(original)
        copy = source / f"{animal}s" / f"copy_of_{animal}_{i}.jpg"
        img.resize((img.width // 2, img.height // 2), Image.BICUBIC).save(copy, "JPEG", quality=80)
        planted[frozenset((f"{animal}s/{original.name}", f"{animal}s/{copy.name}"))] = animal
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    weights = SHARED_KERAS / "models" / "mobilenet_7_5_224_tf_no_top.h5"
    (tmp_path / "run").mkdir()
    with working_dir(tmp_path / "run"):
        p = params.parse(tiny_params(raw, source, backbone="mobilenet_0.75", image_size=224, weights=str(weights)))
        assert p.audit.near_duplicate_similarity is None  # the default: auto
        metrics = run_stage_code(p, "fetch", "split", "extract", "audit")
        listed = read_csv(paths.AUDIT_PLOTS / "duplicates.csv")
    found = {frozenset((r["path_a"], r["path_b"])) for r in listed}
    assert found == set(planted), (found, metrics["near_duplicate_similarity"])
    assert all("perceptual hash" in r["found_by"] for r in listed), listed
    assert metrics["duplicates"]["near"] == 2
    calibration = metrics["near_duplicate_calibration"]
    assert calibration["copies_found"] >= 0.95 and metrics["near_duplicate_similarity"] < 0.97 or folder != "train"



def test_a_resized_re_encoded_copy_keeps_its_perceptual_hash_and_other_images_do_not_share_it(tmp_path):
    from conftest import COLOURS, draw_image
    from tlpipe import images

    original = draw_image(COLOURS["red"], 1, size=(160, 120))
    original.save(tmp_path / "a.png")
    original.resize((80, 60), Image.BICUBIC).save(tmp_path / "half.jpg", "JPEG", quality=60)
    draw_image(COLOURS["red"], 2, size=(160, 120)).save(tmp_path / "other.png")
    h = {name: images.inspect(tmp_path / name).perceptual_hash for name in ("a.png", "half.jpg", "other.png")}
    bits = lambda a, b: bin(h[a] ^ h[b]).count("1")  # noqa: E731
    assert bits("a.png", "half.jpg") <= audit.PERCEPTUAL_DISTANCE < bits("a.png", "other.png")


def test_perceptual_pairs_are_counted_exactly_and_the_closest_listed(monkeypatch):
    """Every pair within the distance counted (also past the listed ones), and
    of them those the features' threshold misses, per grouping."""
    monkeypatch.setattr(audit, "MAX_PAIRS", 3)
    hashes = np.array([0, 1, 3, 2**64 - 1, 2**64 - 2, 2**40 - 1], dtype=np.uint64)  # 0-1-2 close, 3-4 close, 5 alone
    has = np.array([True, True, True, True, True, False])
    unit = np.eye(6, dtype=np.float32)  # no two alike by features
    unit[4] = unit[3]  # but 3 and 4 are
    split = np.array([0, 0, 1, 0, 0, 0])
    found = audit.perceptual_pairs(hashes, has, unit, 0.9, {"split": split}, max_distance=2, block=2)
    assert found.total == 4 and found.beyond_features == 3 and found.across == {"split": 2}
    assert [p[:3] for p in found.pairs] == [(0, 1, 1), (1, 2, 1), (3, 4, 1)]


def test_pixel_identical_copies_of_distinct_bytes_are_all_found_in_every_class(tmp_path):
    """20 copies per class with the same pixels and other bytes (split keeps
    them all): every one of the 190 pairs per class is found, whichever class,
    whatever the features' threshold makes of them (here, random-weight
    features on tiny images, it sinks to where every pair is near)."""
    import yaml
    from PIL.PngImagePlugin import PngInfo

    from conftest import REPO, make_class_folders, working_dir

    with working_dir(tmp_path):
        make_class_folders(paths.RAW, per_class=12)
        for name in ("red", "blue"):
            image = Image.open(paths.RAW / name / f"{name}_000.jpg").convert("RGB")
            for k in range(19):
                info = PngInfo()
                info.add_text("copy", str(k))  # other bytes, the same pixels
                image.save(paths.RAW / name / f"same_{k:02d}.png", pnginfo=info)
            image.save(paths.RAW / name / f"same_{19:02d}.png")
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        p = params.parse(tiny_params(raw, paths.RAW))
        metrics = run_stage_code(p, "split", "extract", "audit")
        pairs = read_csv(paths.AUDIT_PLOTS / "duplicates.csv")
    same = [r for r in pairs if r["path_a"].split("/")[-1].startswith("same_") and
            r["path_b"].split("/")[-1].startswith("same_")]
    for name in ("red", "blue"):
        mine = [r for r in same if r["path_a"].startswith(name + "/") and r["path_b"].startswith(name + "/")]
        assert len(mine) == 190, (name, len(mine))
        assert all(r["hash_distance"] == "0" and "perceptual hash" in r["found_by"] for r in mine)
    assert metrics["duplicates"]["near_by_perceptual_hash"] >= 380


def test_multi_label_issues_are_the_flipped_image_label_pairs():
    """Features that carry each label, a few (image, label) pairs flipped: the
    out-of-fold per-label probabilities and cleanlab's multi-label confident
    learning flag exactly those pairs first."""
    rng = np.random.default_rng(0)
    y = (rng.random((300, 3)) < 0.4).astype(np.uint8)
    x = (y @ rng.normal(0, 3, (3, 12)) + rng.normal(0, 1, (300, 12))).astype(np.float16)
    noisy = y.copy()
    flipped = [(5, 0), (17, 1), (42, 2), (99, 0)]
    for i, j in flipped:
        noisy[i, j] = 1 - noisy[i, j]
    probs = audit.out_of_fold_label_probabilities(x, noisy, 5, 0)
    found = audit.label_set_issues(noisy, probs)
    assert {(i, j) for i, j, _ in found[: len(flipped)]} == set(flipped)
    assert [q for _, _, q in found] == sorted(q for _, _, q in found)
