"""The ``folder`` data set: a class-per-subfolder tree of PNG/JPEG images (read with Pillow).

Layout (``root`` is required): if ``root`` holds a ``train``, ``val`` or ``test`` folder it is
split: ``train`` reads ``root/train``, ``test`` reads ``root/val`` (or ``root/test`` when there
is no ``val``). Otherwise ``root`` itself is one class tree, the ``test`` split (asking for
``train`` is an error). Classes are the sorted names of the tree's subfolders (hidden ones,
starting with ``.``, are ignored); label ``i`` is the ``i``-th name. A split layout's two trees
must name the same classes. Images are the files under a class folder, at any depth, in
sorted path order.

Files: ``.png``, ``.jpg`` and ``.jpeg`` (any case) are images and must decode as PNG or JPEG;
any other file is skipped with one logged warning per class folder. A class without images,
an image Pillow cannot identify or decode, or one larger than ``MAX_IMAGE_PIXELS`` (checked
from the header, before decoding) is a `DatasetError` naming the file.

Pre-processing, in this order, as torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` on a
PIL image: convert to RGB (``channels=3``, the default) or greyscale ``L`` (``channels=1``);
``resize``: scale the shorter side to ``resize`` pixels (the longer one to
``int(resize * long / short)``) with Pillow's bilinear filter (antialiased when shrinking);
``crop``: the centre ``crop`` x ``crop`` square, offset ``int(round((size - crop) / 2))``.
An image smaller than the crop is an error (no padding). Without ``crop`` every image must
end up the same size, otherwise the error names the first one that differs.

Output: uint8 ``(N, C, H, W)`` and int64 labels, like the other data sets; ``mean``/``std``
come from the train tree when there is one, else from the test tree. Loaded arrays are cached
per process, keyed by every file's path, size and modification time and the options.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from npusim.data.errors import DatasetError

logger = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg")
FORMATS = ("PNG", "JPEG")
MAX_IMAGE_PIXELS = 2**26  # width x height one image may claim in its header (64 Mpixel)
MAX_DATASET_BYTES = 2**31  # the uint8 array of one split, after pre-processing
MAX_SIZE = 8192  # resize / crop
SPLIT_DIRS = {"train": ("train",), "test": ("val", "test")}
SPLITS = ("train", "test")

_Files = tuple[tuple[str, int, int, int], ...]  # (path, label, size, mtime_ns)


def _fail(message: str) -> None:
    raise DatasetError(f"folder: {message}")


def check_options(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Validated ``resize``, ``crop`` and ``channels`` (defaults filled in by the registry,
    unknown keys refused there)."""
    out = []
    for key in ("resize", "crop", "channels"):
        v = options[key]
        if key == "channels":
            if v not in (1, 3) or isinstance(v, bool):
                _fail(f"channels must be 1 (greyscale) or 3 (RGB), got {v!r}")
        elif v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                or not 1 <= v <= MAX_SIZE):
            _fail(f"{key} must be an int in [1, {MAX_SIZE}], got {v!r}")
        out.append((key, None if v is None else int(v)))
    return tuple(out)


def _root(root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        _fail("no data directory given; pass --root DIR (a class-per-subfolder tree of "
              "PNG/JPEG images, or one with train/ and val/ trees)")
    path = Path(os.fspath(root)).expanduser()
    if not path.exists():
        _fail(f"{path} does not exist")
    if not path.is_dir():
        _fail(f"{path} is not a directory")
    return path


def _subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_tree(root: str | os.PathLike[str] | None, split: str) -> tuple[Path, Path | None]:
    """The class tree of `split` under `root` and the train tree (None when there is none)."""
    path = _root(root)
    subdirs = set(_subdirs(path))
    if not subdirs & {"train", "val", "test"}:
        if split == "train":
            _fail(f"{path} has no train/ folder (a single class-per-subfolder tree is the test "
                  "split)")
        return path, None
    train = path / "train" if "train" in subdirs else None
    if split == "train":
        if train is None:
            _fail(f"{path} has no train/ folder")
        return train, train
    name = next((d for d in SPLIT_DIRS["test"] if d in subdirs), None)
    if name is None:
        _fail(f"{path} has no val/ (or test/) folder for the test split")
    return path / name, train


def _classes(tree: Path) -> tuple[str, ...]:
    classes = tuple(_subdirs(tree))
    if not classes:
        _fail(f"{tree} has no class folders (expected one subfolder of images per class)")
    return classes


def _listing(tree: Path, classes: tuple[str, ...]) -> _Files:
    """Every image of the tree with its label, size and mtime; other files are skipped."""
    files = []
    for label, name in enumerate(classes):
        found, skipped = [], []
        for p in sorted((tree / name).rglob("*")):
            if not p.is_file():
                continue
            (found if p.suffix.lower() in EXTENSIONS else skipped).append(p)
        if skipped:
            logger.warning("folder: skipped %d non-image file(s) in %s (only %s are read), "
                           "e.g. %s", len(skipped), tree / name, "/".join(EXTENSIONS), skipped[0])
        if not found:
            _fail(f"class folder {tree / name} has no images ({'/'.join(EXTENSIONS)})")
        for p in found:
            st = p.stat()
            files.append((str(p.absolute()), label, st.st_size, st.st_mtime_ns))
    return tuple(files)


def _prepare(path: str, options: dict[str, Any]):
    """One image opened, checked from its header, decoded and pre-processed (a PIL image)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # Pillow's own (higher) bomb cap: an error here too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:  # reads the header only
                w, h = im.size
                if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
                    _fail(f"{path}: its header claims {w}x{h} pixels, at most "
                          f"{MAX_IMAGE_PIXELS} allowed")
                img = im.convert("L" if options["channels"] == 1 else "RGB")  # decodes
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        _fail(f"{path}: refused as a decompression bomb ({' '.join(str(exc).split())[:120]}); "
              f"at most {MAX_IMAGE_PIXELS} pixels allowed")
    except Exception as exc:  # corrupt files raise almost anything from the decoders
        _fail(f"{path} is not a readable PNG/JPEG image ({type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:120]})")
    size = options["resize"]
    if size is not None:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        other = int(size * long / short)
        img = img.resize((size, other) if w <= h else (other, size), Image.Resampling.BILINEAR)
    crop = options["crop"]
    if crop is not None:
        w, h = img.size
        if w < crop or h < crop:
            _fail(f"{path} is {w}x{h} after resizing, smaller than crop={crop}")
        top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop))
    return img


@functools.lru_cache(maxsize=4)
def _load(files: _Files, params: tuple[tuple[str, Any], ...]) -> tuple[np.ndarray, np.ndarray]:
    options = dict(params)
    first = _prepare(files[0][0], options)
    w, h = first.size
    c = options["channels"]
    nbytes = len(files) * c * h * w
    if nbytes > MAX_DATASET_BYTES:
        _fail(f"{len(files)} images of {c}x{h}x{w} need {nbytes} bytes, at most "
              f"{MAX_DATASET_BYTES} allowed (give a smaller resize/crop)")
    images = np.empty((len(files), c, h, w), np.uint8)
    for i, (path, _, _, _) in enumerate(files):
        img = first if i == 0 else _prepare(path, options)
        if img.size != (w, h):
            _fail(f"{path} is {img.size[0]}x{img.size[1]} but {files[0][0]} is {w}x{h}; give "
                  "crop= (and resize=), e.g. --data folder:resize=256,crop=224")
        a = np.asarray(img, dtype=np.uint8)
        images[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    labels = np.array([f[1] for f in files], np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_folder(root: str | os.PathLike[str] | None, split: str, options: dict[str, Any]
                ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray]:
    """(images, labels, class names, train images for the statistics) of one split; the
    arrays are the read-only cached ones."""
    params = check_options(options)
    tree, train = split_tree(root, split)
    classes = _classes(tree)
    if train is not None and train != tree:
        train_classes = _classes(train)
        if train_classes != classes:
            only = sorted(set(classes) ^ set(train_classes))
            _fail(f"{tree} and {train} name different classes (not in both: "
                  f"{', '.join(only[:5])}{', ...' if len(only) > 5 else ''})")
    images, labels = _load(_listing(tree, classes), params)
    stats = images if train is None or train == tree else _load(_listing(train, classes), params)[0]
    logger.info("folder: %s: %d images in %d classes, %s", tree, len(labels), len(classes),
                "x".join(map(str, images.shape[1:])))
    return images, labels, classes, stats


def image_files(root: str | os.PathLike[str] | None) -> list[tuple[str, str, int, int, int]]:
    """(split, absolute path, label, size, mtime_ns) of every image of every split the tree
    under `root` has (a single tree is the test split), without decoding any."""
    out = []
    for split in SPLITS:
        try:
            tree, _ = split_tree(root, split)
        except DatasetError:
            if split == "train":
                continue  # a tree without train/ has only the test split
            raise
        out += [(split, *f) for f in _listing(tree, _classes(tree))]
    return out


__all__ = ["MAX_IMAGE_PIXELS", "check_options", "image_files", "load_folder", "split_tree"]
