"""Image decoding as every stage and tlpipe predict does it: each format routed
to the decoder that reads it (TensorFlow's for plain JPEG/PNG, Pillow's for the
rest), always upright RGB; the training dataset's shuffle seeded per epoch."""

import numpy as np
from PIL import Image

from tlpipe import images

from conftest import COLOURS, draw_image, make_class_folders


def _save_variants(folder):
    folder.mkdir(parents=True, exist_ok=True)
    base = draw_image(COLOURS["red"], 5, size=(40, 30))
    base.convert("CMYK").save(folder / "cmyk.jpg")
    base.convert("L").save(folder / "grey.jpg")
    base.convert("RGBA").save(folder / "rgba.png")
    base.convert("P").save(folder / "palette.png")
    base.save(folder / "anim.gif")
    base.save(folder / "bitmap.bmp")
    base.save(folder / "photo.webp")
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(grey16).save(folder / "deep.png")  # a 16-bit greyscale PNG
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise to view
    base.save(folder / "rotated.jpg", exif=exif.tobytes())
    base.save(folder / "plain.jpg")
    return base


def test_odd_formats_are_valid_and_routed_to_the_right_decoder(tmp_path):
    _save_variants(tmp_path)
    decoders = {p.name: images.inspect(p).decoder for p in tmp_path.iterdir()}
    assert decoders == {
        "cmyk.jpg": "pil", "grey.jpg": "tf", "rgba.png": "tf", "palette.png": "tf",
        "anim.gif": "pil", "bitmap.bmp": "pil", "photo.webp": "pil", "deep.png": "pil",
        "rotated.jpg": "pil", "plain.jpg": "tf",
    }


def test_every_decoder_path_gives_upright_rgb(tmp_path):
    import tensorflow as tf

    base = _save_variants(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        info = images.inspect(path)
        tensor = images.load_tensor(tf.constant(str(path)), tf.constant(info.decoder), 24).numpy()
        assert tensor.shape == (24, 24, 3), path.name
        assert 0 <= tensor.min() and tensor.max() <= 255
    rotated = images.read_rgb(tmp_path / "rotated.jpg")
    assert rotated.shape == (base.width, base.height, 3)  # portrait after EXIF rotation
    deep = images.read_rgb(tmp_path / "deep.png")
    assert abs(float(deep.mean()) - float(np.asarray(base.convert("L")).mean())) < 1.0


def test_image_dataset_follows_its_epoch_orders(tmp_path):
    from tlpipe.training import EpochOrders

    files = sorted(make_class_folders(tmp_path, per_class=6).rglob("*.jpg"))
    labels = np.arange(len(files))

    def epochs(seed):
        orders = EpochOrders(len(files), 4, seed, run=0)
        ds = images.dataset(files, ["tf"] * len(files), 8, 4, labels=labels, orders=orders)
        seen = []
        for number in range(2):
            orders.on_epoch_begin(number)
            seen.append(np.concatenate([y.numpy() for _, y in ds]).tolist())
        return seen

    first, again = epochs(1), epochs(1)
    assert first == again
    assert first[0] != first[1] and sorted(first[0]) == labels.tolist()
    plain = images.dataset(files, ["tf"] * len(files), 8, 4, labels=labels)
    assert np.concatenate([y.numpy() for _, y in plain]).tolist() == labels.tolist()
