"""The pictures stages write: each a readable PNG of the data it is given,
including the empty cases a run can produce."""

import numpy as np
from PIL import Image

from tlpipe import paths, report

from conftest import COLOURS, draw_image


def png_size(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def test_confusion_picture(tmp_path):
    report.confusion_png(tmp_path / "c.png", [0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c"])
    assert png_size(tmp_path / "c.png")[0] > 100


def test_label_issues_picture_names_each_file_and_says_when_there_is_none(in_tmp_cwd):
    (paths.RAW / "cats").mkdir(parents=True)
    draw_image(COLOURS["red"], 1).save(paths.RAW / "cats" / "x.jpg")
    report.label_issues_png(in_tmp_cwd / "issues.png", [("cats/x.jpg", "val", "cats", "dogs", 0.01)])
    report.label_issues_png(in_tmp_cwd / "none.png", [])
    def red_pixels(name):
        rgb = np.asarray(Image.open(in_tmp_cwd / name).convert("RGB")).astype(int)
        return int(((rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)).sum())

    assert red_pixels("issues.png") > 1000  # the image itself is shown
    assert red_pixels("none.png") == 0
    assert np.asarray(Image.open(in_tmp_cwd / "none.png").convert("L")).min() < 100  # its text is drawn
