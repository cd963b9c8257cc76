"""fetch: local folders and archives, unwrapping, checksums, and archive safety."""

import io
import tarfile
import zipfile

import pytest

from tlpipe import atomic
from tlpipe import fetch as fetch_module
from tlpipe.errors import TlpipeError
from tlpipe.params import DataParams

from conftest import make_class_folders


def fetch(source, target, sha256=None):
    return fetch_module.run(DataParams(str(source), sha256), target)


def zip_folder(folder, archive, prefix=""):
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def test_local_folder_is_copied_without_hidden_files(images_dir, tmp_path):
    (images_dir / "red" / ".DS_Store").write_bytes(b"junk")
    (images_dir / ".hidden").mkdir()
    out = fetch(images_dir, tmp_path / "raw")
    assert sorted(p.name for p in out.iterdir()) == ["blue", "red"]
    assert not (out / "red" / ".DS_Store").exists()
    assert len(list((out / "red").iterdir())) == 12


def test_zip_with_wrapping_folder_and_split_folders_is_unwrapped(tmp_path):
    src = tmp_path / "src"
    make_class_folders(src / "train", per_class=3)
    make_class_folders(src / "validation", per_class=2)
    archive = zip_folder(src, tmp_path / "cats.zip", prefix="cats_and_dogs_filtered/")
    out = fetch(archive, tmp_path / "raw")
    assert sorted(p.name for p in out.iterdir()) == ["train", "validation"]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["blue", "red"]


def test_tar_gz_archive(tmp_path):
    src = make_class_folders(tmp_path / "src", per_class=2)
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="dataset")
    out = fetch(archive, tmp_path / "raw")
    assert sorted(p.name for p in out.iterdir()) == ["blue", "red"]


def test_checksum_is_verified_before_extracting(images_dir, tmp_path):
    archive = zip_folder(images_dir, tmp_path / "d.zip")
    good = atomic.sha256_of(archive)
    assert fetch(archive, tmp_path / "ok", sha256=good).is_dir()
    with pytest.raises(TlpipeError, match="Checksum mismatch .* Nothing was extracted"):
        fetch(archive, tmp_path / "bad", sha256="0" * 64)
    assert not (tmp_path / "bad").exists()


def test_failed_fetch_keeps_the_previous_output(images_dir, tmp_path):
    target = fetch(images_dir, tmp_path / "raw")
    with pytest.raises(TlpipeError):
        fetch(tmp_path / "missing.zip", target)
    assert sorted(p.name for p in target.iterdir()) == ["blue", "red"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw.")]


def _zip_with(tmp_path, name, data=b"x", symlink=False):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (0o120777 << 16)
        zf.writestr(info, data)
    return archive


@pytest.mark.parametrize("member", ["../escape.jpg", "/etc/evil.jpg", "a/../../escape.jpg"])
def test_zip_members_escaping_the_target_are_refused(tmp_path, member):
    with pytest.raises(TlpipeError, match="Refusing to extract .* would land outside"):
        fetch(_zip_with(tmp_path, member), tmp_path / "raw")
    assert not (tmp_path / "escape.jpg").exists()
    assert not (tmp_path / "raw").exists()


def test_zip_symlink_member_is_refused(tmp_path):
    archive = _zip_with(tmp_path, "cats/link.jpg", data=b"/etc/passwd", symlink=True)
    with pytest.raises(TlpipeError, match="is a link or special file"):
        fetch(archive, tmp_path / "raw")


def _tar_with(tmp_path, member: tarfile.TarInfo, data=b""):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return archive


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("traversal", "would land outside"),
        ("absolute", "would land outside"),
        ("symlink", "is a link"),
        ("hardlink", "is a link"),
        ("device", "is a device or pipe"),
    ],
)
def test_tar_unsafe_members_are_refused(tmp_path, kind, expected):
    info = tarfile.TarInfo({"traversal": "../x.jpg", "absolute": "/tmp/x.jpg"}.get(kind, "cats/x.jpg"))
    data = b""
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    elif kind == "device":
        info.type = tarfile.CHRTYPE
    else:
        data = b"abc"
        info.size = 3
    with pytest.raises(TlpipeError, match=expected):
        fetch(_tar_with(tmp_path, info, data), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_archive_that_is_not_what_its_name_says(tmp_path):
    fake = tmp_path / "data.zip"
    fake.write_text("<html>not found</html>")
    with pytest.raises(TlpipeError, match="is not a zip archive"):
        fetch(fake, tmp_path / "raw")
    fake_tar = tmp_path / "data.tgz"
    fake_tar.write_text("nope")
    with pytest.raises(TlpipeError, match="is not a readable tar archive"):
        fetch(fake_tar, tmp_path / "raw")


def test_missing_source_says_what_is_valid(tmp_path):
    with pytest.raises(TlpipeError, match="'data.source' parameter must be an http"):
        fetch(tmp_path / "nowhere", tmp_path / "raw")


def test_unreachable_url_points_to_offline_use(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(TlpipeError, match="Could not download .*KERAS_HOME"):
        fetch("http://127.0.0.1:9/cats.zip", tmp_path / "raw")


def test_url_is_served_from_the_keras_cache(tmp_path, monkeypatch, images_dir):
    cache = tmp_path / "keras-home"
    (cache / "datasets").mkdir(parents=True)
    zip_folder(images_dir, cache / "datasets" / "pets.zip", prefix="pets/")
    monkeypatch.setenv("KERAS_HOME", str(cache))
    out = fetch("https://example.invalid/data/pets.zip", tmp_path / "raw")
    assert sorted(p.name for p in out.iterdir()) == ["blue", "red"]


# ---------------------------------------------------------------- harsher archives


def test_zip_bomb_member_is_refused_by_name_before_writing(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cats/ok.jpg", b"x" * 100)
        zf.writestr("cats/bomb.bmp", b"\0" * (64 * 1024**2))  # 64 MiB of zeros: ~1000:1
    with pytest.raises(TlpipeError, match=r"member 'cats/bomb.bmp' inflates .*:1 .*zip bomb"):
        fetch(archive, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_total_uncompressed_size_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "MAX_UNCOMPRESSED_BYTES", 1000)
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"cats/{i}.jpg", bytes(600))
    with pytest.raises(TlpipeError, match=r"member 'cats/1.jpg' takes the archive past"):
        fetch(archive, tmp_path / "raw")


def test_member_that_lies_about_its_size_is_refused(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("cats/a.jpg", bytes(5000))
    data = bytearray(archive.read_bytes())
    # shrink the declared size in the central directory (5000 -> 50)
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (50).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(TlpipeError, match=r"cats/a.jpg"):
        fetch(archive, tmp_path / "raw")


def test_zip_with_two_members_of_one_name_is_refused(tmp_path):
    archive = tmp_path / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("cats/a.jpg", b"first")
            zf.writestr("cats/a.jpg", b"second")
    with pytest.raises(TlpipeError, match=r"member 'cats/a.jpg' appears twice"):
        fetch(archive, tmp_path / "raw")


def test_zip_written_without_file_type_bits_is_accepted(tmp_path, images_dir):
    """Python's ZipFile.writestr (and many Windows tools) set no file-type bits."""
    archive = tmp_path / "plain.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(images_dir.rglob("*.jpg")):
            zf.writestr(path.relative_to(images_dir).as_posix(), path.read_bytes())
    assert all((i.external_attr >> 16) & 0o170000 == 0 for i in zipfile.ZipFile(archive).infolist())
    out = fetch(archive, tmp_path / "raw")
    assert sorted(p.name for p in out.iterdir()) == ["blue", "red"]


def test_zip_member_with_a_bad_crc_is_a_clear_error(tmp_path):
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("cats/a.jpg", b"A" * 1000)
    data = archive.read_bytes().replace(b"A" * 10, b"B" * 10, 1)  # flip stored bytes, keep the CRC
    archive.write_bytes(data)
    with pytest.raises(TlpipeError, match=r"is corrupt: member 'cats/a.jpg' cannot be read \(Bad CRC"):
        fetch(archive, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_truncated_tar_gz_is_a_clear_error(tmp_path):
    src = make_class_folders(tmp_path / "src", per_class=4)
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="dataset")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(TlpipeError, match=r"data.tar.gz is not a readable tar archive .*truncated or corrupt"):
        fetch(archive, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_dangling_symlink_in_a_folder_source_is_recorded(images_dir, tmp_path):
    (images_dir / "red" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (images_dir / "red" / "alias.jpg").symlink_to(images_dir / "red" / "red_000.jpg")
    out = fetch(images_dir, tmp_path / "raw")
    assert (out / "red" / "alias.jpg").is_file() and not (out / "red" / "alias.jpg").is_symlink()
    rejected = (out / ".fetch_rejected.csv").read_text()
    assert "red/gone.jpg" in rejected and "does not exist" in rejected


def test_names_that_are_not_utf8_never_reach_data_raw(tmp_path):
    """Latin-1 names (the bytes caf\\xe9) in a folder source and inside a .tar.gz:
    DVC cannot hash them, so they are listed (readably) for rejected.csv, not copied."""
    import os

    src = make_class_folders(tmp_path / "src", per_class=3)
    odd = os.fsencode(src / "red") + b"/caf\xe9.jpg"
    with open(odd, "wb") as f:
        f.write((src / "red" / "red_000.jpg").read_bytes())
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="dataset")
    for source, target in ((src, tmp_path / "raw_folder"), (archive, tmp_path / "raw_tar")):
        out = fetch(source, target)
        names = [os.fsencode(p) for p in out.rglob("*")]
        assert all(name.decode("utf-8") for name in names)  # every name DVC will see is UTF-8
        assert len(list((out / "red").iterdir())) == 3
        rejected = (out / ".fetch_rejected.csv").read_text()
        assert "red/caf\\xe9.jpg" in rejected and "not valid UTF-8" in rejected, rejected


def test_folder_walk_lists_what_sorted_rglob_lists_one_folder_at_a_time(tmp_path):
    """The folder source is listed folder by folder (memory: one folder's
    names), in the order sorted(rglob) gives, links to folders not entered."""
    root = tmp_path / "src"
    for rel in ("a/x.jpg", "a/b/y.jpg", "a-b/z.jpg", "a b/w.jpg", "B/v.jpg", "a/b c/u.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "link").symlink_to(root / "a", target_is_directory=True)
    assert list(fetch_module._walk(root)) == sorted(root.rglob("*"))


def test_a_link_leading_outside_the_source_is_never_read(images_dir, tmp_path):
    """A private file reached through a link in the source must not be copied
    into data/raw (and from there into DVC's cache); links that stay inside
    are followed, loops never."""
    private = tmp_path / "private" / "passwd"
    private.parent.mkdir()
    private.write_bytes(b"root:secret")
    private.chmod(0o600)
    (images_dir / "red" / "passwd.jpg").symlink_to(private)
    (images_dir / "blue" / "elsewhere").symlink_to(private.parent, target_is_directory=True)
    (images_dir / "red" / "loop_a.jpg").symlink_to(images_dir / "red" / "loop_b.jpg")
    (images_dir / "red" / "loop_b.jpg").symlink_to(images_dir / "red" / "loop_a.jpg")
    (images_dir / "red" / "alias.jpg").symlink_to(images_dir / "red" / "red_000.jpg")
    out = fetch(images_dir, tmp_path / "raw")
    assert not (out / "red" / "passwd.jpg").exists() and not (out / "blue" / "elsewhere").exists()
    assert not any(f.is_file() and f.read_bytes() == b"root:secret" for f in out.rglob("*"))
    assert (out / "red" / "alias.jpg").is_file()
    rejected = (out / ".fetch_rejected.csv").read_text()
    assert "red/passwd.jpg" in rejected and "blue/elsewhere" in rejected and "outside data.source" in rejected
    assert "red/loop_a.jpg" in rejected and "loops" in rejected


def test_many_small_members_that_add_up_to_a_bomb_are_refused_before_writing(tmp_path):
    """Each member under the per-member ratio check's floor (1 MiB): the whole
    archive's ratio catches them."""
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.writestr(f"cats/{i:03d}.bmp", b"\0" * (1024**2 - 1))
    with pytest.raises(TlpipeError) as err:
        fetch(archive, tmp_path / "raw")
    message = str(err.value)
    assert message.startswith(f"Refusing to extract {archive}: its 40 files declare 41.9 MB uncompressed")
    assert "zip bomb" in message and "\n" not in message
    assert not (tmp_path / "raw").exists()


def test_an_archive_larger_than_the_free_space_is_refused_with_both_sizes(tmp_path, monkeypatch, images_dir):
    import shutil

    archive = zip_folder(images_dir, tmp_path / "photos.zip")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(TlpipeError, match=r"Refusing to extract .*photos.zip: its files need .* kB in .*th0, and 1 kB "
                                          r"are free there; free .* or more \(nothing was extracted\)"):
        fetch(archive, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
