"""The ``folder`` data set: class-per-subfolder PNG/JPEG trees written here with Pillow."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npusim.data import DatasetError, check_data_spec, load_dataset, parse_data_spec
from npusim.data.folder import MAX_IMAGE_PIXELS


def pattern(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    """A distinct (h, w, channels) uint8 image."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, channels) if channels > 1 else (h, w), dtype=np.uint8)


def write(path: Path, array: np.ndarray, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tree(root: Path, classes=("cat", "dog", "ant"), per_class=2, size=(6, 8)) -> dict:
    """PNG images root/<class>/<i>.png; returns {path: (array, class)}."""
    out = {}
    for ci, name in enumerate(classes):
        for i in range(per_class):
            a = pattern(*size, seed=10 * ci + i)
            out[write(root / name / f"{i}.png", a)] = (a, name)
    return out


def one_line(exc, *needles):
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("folder:"), msg
    for n in needles:
        assert str(n) in msg, (n, msg)


def test_flat_tree_is_the_test_split_with_sorted_class_names(tmp_path):
    files = tree(tmp_path)
    ds = load_dataset("folder", "test", root=tmp_path)
    assert ds.classes == ("ant", "cat", "dog") and ds.num_classes == 3
    assert ds.images.dtype == np.uint8 and ds.images.shape == (6, 3, 6, 8)
    # sorted class order, then sorted file order inside a class; PNG is lossless
    expected = [files[tmp_path / c / f"{i}.png"] for c in ds.classes for i in range(2)]
    for img, label, (a, name) in zip(ds.images, ds.labels, expected):
        np.testing.assert_array_equal(img, a.transpose(2, 0, 1))
        assert ds.classes[label] == name
    assert len(ds.mean) == 3 and len(ds.std) == 3
    with pytest.raises(DatasetError) as exc:
        load_dataset("folder", "train", root=tmp_path)
    one_line(exc, "no train/ folder")


def test_train_and_val_trees(tmp_path):
    tree(tmp_path / "train", per_class=3)
    tree(tmp_path / "val", per_class=1)
    train = load_dataset("folder", "train", root=tmp_path)
    test = load_dataset("folder", "test", root=tmp_path)
    assert (len(train), len(test)) == (9, 3)
    assert train.classes == test.classes and train.mean == test.mean
    write(tmp_path / "val" / "bee" / "0.png", pattern(6, 8, 0))
    with pytest.raises(DatasetError) as exc:
        load_dataset("folder", "test", root=tmp_path)
    one_line(exc, "different classes", "bee")


def test_jpeg_greyscale_and_a_changed_file_is_reread(tmp_path):
    a = pattern(8, 8, 1)
    write(tmp_path / "x" / "a.JPG", a, "JPEG")
    write(tmp_path / "y" / "sub" / "b.jpeg", pattern(8, 8, 2), "JPEG")  # nested: still class y
    ds = load_dataset("folder:channels=1", "test", root=tmp_path)
    assert ds.images.shape == (2, 1, 8, 8) and ds.labels.tolist() == [0, 1]
    with Image.open(tmp_path / "x" / "a.JPG") as im:
        np.testing.assert_array_equal(ds.images[0, 0], np.asarray(im.convert("L")))
    write(tmp_path / "x" / "a.JPG", np.zeros((8, 8, 3), np.uint8), "JPEG")
    again = load_dataset("folder:channels=1", "test", root=tmp_path)
    assert (again.images[0] == 0).all()


def test_center_crop_offsets_round_half_even_like_torchvision(tmp_path):
    a = pattern(9, 12, 3)
    write(tmp_path / "c" / "a.png", a)
    ds = load_dataset("folder:crop=4", "test", root=tmp_path)
    # top = round((9 - 4) / 2) = round(2.5) = 2, left = round(4.0) = 4
    np.testing.assert_array_equal(ds.images[0], a[2:6, 4:8].transpose(2, 0, 1))


def test_resize_shorter_side_then_crop(tmp_path):
    write(tmp_path / "c" / "wide.png", np.full((20, 40, 3), 77, np.uint8))
    write(tmp_path / "c" / "tall.png", np.full((30, 21, 3), 200, np.uint8))
    with pytest.raises(DatasetError) as exc:  # 10x14 and 20x10: sizes differ without crop
        load_dataset("folder:resize=10", "test", root=tmp_path)
    one_line(exc, "wide.png is 20x10", "tall.png is 10x14", "crop=")
    ds = load_dataset("folder:resize=10,crop=10", "test", root=tmp_path)
    assert ds.images.shape == (2, 3, 10, 10)
    # a uniform image stays uniform through the bilinear resize
    assert (ds.images[0] == 200).all() and (ds.images[1] == 77).all()
    with pytest.raises(DatasetError) as exc:
        load_dataset("folder:resize=10,crop=11", "test", root=tmp_path)
    one_line(exc, "smaller than crop=11")


def test_mixed_sizes_without_options_name_the_file(tmp_path):
    write(tmp_path / "a" / "0.png", pattern(6, 8, 0))
    write(tmp_path / "b" / "1.png", pattern(7, 8, 1))
    with pytest.raises(DatasetError) as exc:
        load_dataset("folder", "test", root=tmp_path)
    one_line(exc, "1.png", "8x7", "0.png", "8x6")


def test_non_image_files_are_skipped_with_a_warning(tmp_path, caplog):
    tree(tmp_path, per_class=1)
    (tmp_path / "cat" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="npusim.data.folder"):
        ds = load_dataset("folder", "test", root=tmp_path)
    assert len(ds) == 3
    assert any("skipped 1 non-image" in r.getMessage() and "notes.txt" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("make, needles", [
    (lambda r: None, ["does not exist"]),
    (lambda r: r.write_text("x"), ["not a directory"]),
    (lambda r: r.mkdir(), ["no class folders"]),
    (lambda r: (r / "a").mkdir(parents=True), ["class folder", "has no images"]),
    (lambda r: (write(r / "a" / "0.png", pattern(4, 4, 0)),
                put(r / "b" / "x.png", b"not an image")), ["x.png", "not a readable"]),
    (lambda r: (write(r / "a" / "0.png", pattern(4, 4, 0)),
                put(r / "b" / "t.png", (r / "a" / "0.png").read_bytes()[:60])),
     ["t.png", "not a readable"]),
    (lambda r: (write(r / "a" / "0.png", pattern(4, 4, 0)),
                write(r / "b" / "g.png", pattern(4, 4, 0)).rename(r / "b" / "g.jpg"),
                Image.new("RGB", (4, 4)).save(r / "b" / "h.png", format="GIF")),
     ["h.png", "not a readable"]),
])
def test_bad_trees_are_one_line_errors(tmp_path, make, needles):
    root = tmp_path / "root"
    make(root)
    with pytest.raises(DatasetError) as exc:
        load_dataset("folder", "test", root=root)
    one_line(exc, *needles)


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims w x h pixels, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [9000, 20000])  # over our cap; over Pillow's bomb limit too
def test_huge_header_is_refused_before_decoding(tmp_path, side):
    assert side * side > MAX_IMAGE_PIXELS
    png_header_only(tmp_path / "a" / "bomb.png", side, side)
    with pytest.raises(DatasetError) as exc:
        load_dataset("folder", "test", root=tmp_path)
    one_line(exc, "bomb.png", str(MAX_IMAGE_PIXELS))


def test_missing_root_and_bad_specs():
    with pytest.raises(DatasetError) as exc:
        load_dataset("folder", "test")
    one_line(exc, "--root")
    assert parse_data_spec(" Folder:resize=256, crop=224") == ("folder", {"resize": 256,
                                                                          "crop": 224})
    assert parse_data_spec("synthetic:shape=3x8x8") == ("synthetic", {"shape": (3, 8, 8)})
    assert check_data_spec("folder:crop=32") == "folder"
    for spec, needle in [("folder:resize", "bad option"), ("folder:resize=1.5", "bad option"),
                         ("folder:resize=__import__", "bad option"), ("folder:size=3", "size"),
                         ("folder:crop=0", "crop"), ("folder:channels=2", "channels"),
                         ("folder:crop=3,crop=4", "twice"), ("nope:x=1", "unknown dataset")]:
        with pytest.raises(DatasetError) as exc:
            check_data_spec(spec)
        assert needle in str(exc.value) and "\n" not in str(exc.value)
