"""Reading images the same way everywhere: split, extract, finetune, evaluate, predict.

The split stage opens and decodes every image once with Pillow (``inspect``)
and records which decoder the image needs:

* ``tf``  -- plain 8-bit JPEG (RGB or grey, upright) and 8-bit PNG: decoded by
  TensorFlow inside the tf.data graph, in parallel, without the GIL;
* ``pil`` -- everything else (EXIF-rotated photos, CMYK JPEG, 16-bit PNG, GIF,
  BMP, WebP, TIFF...): decoded by Pillow, rotated upright, converted to RGB.

Either way the result is an RGB uint8 image, resized (squashed, antialiased)
to ``image_size`` and handed to the model as float32 in 0..255; each model
applies its own backbone preprocessing inside its graph.
"""

from __future__ import annotations

import re
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Decompression-bomb guard: 100 megapixels (a 10,000 x 10,000 image) is far
# beyond what any classifier input needs and costs ~300 MB to decode.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

EXIF_ORIENTATION = 0x0112
TF_FORMATS = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "RGBA", "L", "LA", "P")}
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
}


@dataclass(frozen=True)
class Inspection:
    ok: bool
    reason: str = ""  # why not ok
    decoder: str = ""  # "tf" or "pil" when ok
    perceptual_hash: int | None = None  # 64 bits (see perceptual_hash) when ok


def perceptual_hash(img: Image.Image) -> int:
    """pHash, as the data-cleaning tools compute it (imagededup, cleanvision):
    the image in grey at 32x32, its 2-D DCT, and which of the 8x8 lowest
    frequencies lie above their median. 64 bits that a resized, re-encoded or
    slightly cropped copy keeps (a few bits apart at most), where two distinct
    photos differ in about half of them, whatever the backbone sees in them."""
    from scipy.fft import dctn

    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(grey, norm="ortho")[:8, :8]
    return int.from_bytes(np.packbits(low > np.median(low)).tobytes(), "big")


def is_hidden(path: Path) -> bool:
    """Hidden files and folders (.DS_Store, ._foo.jpg, .git) are skipped silently."""
    return any(part.startswith(".") for part in path.parts)


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        header = f.read(26)
    return header[24] if len(header) > 24 else 8


def inspect(path: Path | str) -> Inspection:
    """Open and fully decode one image; say whether it is usable and how to read it."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return Inspection(False, "empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt, mode, (w, h) = img.format, img.mode, img.size
                if w * h > MAX_PIXELS:
                    return Inspection(False, _too_large(w, h))
                orientation = img.getexif().get(EXIF_ORIENTATION, 1)
                if fmt == "JPEG":
                    # Decode at 1/8 scale: every byte of entropy-coded data is
                    # still read (so truncation is caught), at a fraction of the
                    # cost; at least 64 px a side, so that a small copy hashes
                    # from as many pixels as its original.
                    img.draft(img.mode, (max(64, w // 8), max(64, h // 8)))
                img.load()
                try:  # on the pixels just decoded (a JPEG's reduced: plenty for 32x32)
                    phash = perceptual_hash(img)
                except (OSError, ValueError):
                    phash = None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Inspection(False, f"too large: more than {MAX_PIXELS:,} pixels")
    except Image.UnidentifiedImageError:
        return Inspection(False, "not an image (Pillow cannot identify it)")
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        return Inspection(False, f"cannot decode: {err}")
    plain = fmt in TF_FORMATS and mode in TF_FORMATS[fmt] and orientation == 1
    if plain and fmt == "PNG" and _png_bit_depth(path) == 16:
        plain = False
    return Inspection(True, decoder="tf" if plain else "pil", perceptual_hash=phash)


def undecodable_by_tensorflow(files) -> dict[str, str]:
    """{file: TensorFlow's error} for the files its image decoder rejects (JPEGs
    with corrupt data in the middle pass Pillow but stop a training stage).

    All files go through one parallel tf.data pass; only the failures, found
    as the indices missing from its output, are decoded again for the message.
    """
    if not files:
        return {}
    import tensorflow as tf

    files = [str(f) for f in files]

    def decode(i, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return i, tf.shape(image)  # used, so the decode is not pruned from the graph

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(files)), files))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=False)
    good = {int(i) for i, _ in ds.as_numpy_iterator()}
    bad = {}
    for i in sorted(set(range(len(files))) - good):
        try:
            tf.io.decode_image(tf.io.read_file(files[i]), channels=3, expand_animations=False)
            bad[files[i]] = "failed inside a batch"
        except tf.errors.OpError as err:
            message = re.sub(r"\{\{[^}]*\}\}\s*", "", err.message).splitlines()[0]  # drop TF's node name
            bad[files[i]] = message.split(" [Op:")[0][:200]
    return bad


def _too_large(w: int, h: int) -> str:
    return f"too large: {w}x{h} = {w * h:,} pixels, limit {MAX_PIXELS:,}"


def to_rgb(img: Image.Image) -> Image.Image:
    """Upright 8-bit RGB, whatever the file held."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale to 8 bits (convert() would clip instead).
        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Drop alpha the way TensorFlow's decoder does (no compositing).
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_rgb(path: Path | str) -> np.ndarray:
    """Decode with Pillow to an upright RGB uint8 array (H, W, 3)."""
    with Image.open(path) as img:
        return np.asarray(to_rgb(img), dtype=np.uint8)


def _read_rgb_bytes(path) -> np.ndarray:
    # tf.numpy_function passes bytes in a graph, a 0-d bytes array when eager.
    path = np.asarray(path).item()
    return read_rgb(path.decode() if isinstance(path, bytes) else path)


def load_tensor(path, decoder, image_size: int):
    """tf.data map function: file path + decoder -> float32 (size, size, 3) in 0..255."""
    import tensorflow as tf

    def tf_decode():
        raw = tf.io.read_file(path)
        return tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8)

    def pil_decode():
        return tf.numpy_function(_read_rgb_bytes, [path], tf.uint8, stateful=False)

    image = tf.cond(tf.equal(decoder, "pil"), pil_decode, tf_decode)
    image.set_shape([None, None, 3])
    return tf.image.resize(image, (image_size, image_size), antialias=True)


def dataset(files, decoders, image_size: int, batch_size: int, labels=None, orders=None):
    """A batched, prefetched tf.data pipeline over image files: in the given
    order, or, with ``orders`` (training.EpochOrders), in the order it draws
    for each epoch."""
    import tensorflow as tf

    files = [str(f) for f in files]
    decoders = list(decoders)
    items = (files, decoders) if labels is None else (files, decoders, np.asarray(labels))
    if orders is None:
        ds = tf.data.Dataset.from_tensor_slices(items)
    else:
        # Ordering indices, before anything is decoded, keeps memory small.
        columns = tuple(tf.constant(column) for column in items)
        ds = orders.dataset().unbatch().map(lambda i: tuple(tf.gather(c, i) for c in columns))

    def load(path, decoder, *label):
        image = load_tensor(path, decoder, image_size)
        return (image, *label) if label else image

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict(model, files, decoders, image_size: int, batch_size: int, desc: str = ""):
    """Yield ``model``'s outputs batch by batch (NumPy; a list for a model with
    several outputs), in file order, with a progress bar.

    The one forward pass over image files that extract, fine-tuning and
    evaluate share, so every stage sees an image the same way.
    """
    import tensorflow as tf
    from tqdm import tqdm

    forward = _FORWARD.get(model)
    if forward is None:  # one traced function per model, however many passes (splits) it makes
        forward = _FORWARD[model] = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    with tqdm(total=len(files), desc=desc, unit="img", mininterval=1, disable=not desc) as bar:
        for batch in dataset(files, decoders, image_size, batch_size):
            out = forward(batch)
            out = [o.numpy() for o in out] if isinstance(out, (list, tuple)) else out.numpy()
            bar.update(len(batch))
            yield out


def decode_all(files, decoders, image_size: int, batch_size: int, desc: str = "") -> np.ndarray:
    """Decode every image once into one uint8 array (n, size, size, 3)."""
    from tqdm import tqdm

    parts = []
    with tqdm(total=len(files), desc=desc, unit="img", mininterval=1, disable=not desc) as bar:
        for batch in dataset(files, decoders, image_size, batch_size):
            parts.append(np.clip(np.rint(batch.numpy()), 0, 255).astype(np.uint8))
            bar.update(len(parts[-1]))
    return np.concatenate(parts)
