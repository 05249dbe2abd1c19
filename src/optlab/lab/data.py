"""Data for the lab's tasks: in-memory datasets and the file loaders.

Every task keeps its data in memory as tensors (:class:`ArrayData`); batches
are drawn by index, which is faster than a ``DataLoader`` for data this size
and makes the order a pure function of one ``torch.Generator``.

The file-backed tasks read the datasets' standard distribution formats from
a directory the user names, and never download anything:

- MNIST: the four IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``), gzipped (``.gz``) or not. The IDX header is
  checked (two zero bytes, the type code, the number of dimensions, the
  sizes) against the file length, so a truncated or foreign file is refused.
- CIFAR-10: the python-pickle batches of ``cifar-10-python.tar.gz``
  (``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5`` and
  ``test_batch``), each a dict with ``data`` (N x 3072 uint8, channel-major)
  and ``labels``. They are unpickled with a restricted unpickler that only
  builds dicts, lists and numpy arrays, so a file that is not a CIFAR batch
  cannot run code.

Missing files raise :class:`DatasetNotFoundError` (a ``FileNotFoundError``)
naming the directory, the files expected and where to get them; malformed
files raise :class:`DatasetFormatError` (a ``ValueError``) naming the file and
what is wrong. Loaded arrays are cached per process, keyed by path, size and
modification time.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ArrayData",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "load_cifar10",
    "load_mnist",
    "read_idx",
]


class DatasetNotFoundError(FileNotFoundError):
    """A file-backed task's files are not where the user said."""


class DatasetFormatError(ValueError):
    """A data file exists but is not in the expected format."""


@dataclass(frozen=True)
class ArrayData:
    """A dataset held in memory.

    Attributes:
        inputs: one row per example (any dtype; ``transform`` turns a batch
            of rows into model inputs).
        targets: one target per example, or ``None`` when the inputs are
            all there is (the noisy quadratic).
        transform: applied to every batch of inputs (e.g. uint8 pixels to
            normalised floats), for training and evaluation alike; ``None``
            for identity.
    """

    inputs: Tensor
    targets: Tensor | None = None
    transform: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.targets is not None and len(self.targets) != len(self.inputs):
            raise ValueError(
                f"inputs and targets differ in length: {len(self.inputs)} != {len(self.targets)}"
            )

    def __len__(self) -> int:
        return len(self.inputs)

    def batch(self, index: Tensor | slice) -> tuple[Tensor, Tensor | None]:
        """The examples at ``index``, inputs transformed."""
        inputs = self.inputs[index]
        if self.transform is not None:
            inputs = self.transform(inputs)
        targets = None if self.targets is None else self.targets[index]
        return inputs, targets

    def to(self, device: torch.device | str) -> ArrayData:
        """A copy on ``device`` (the same object when already there)."""
        device = torch.device(device)
        if self.inputs.device == device:
            return self
        targets = None if self.targets is None else self.targets.to(device)
        return ArrayData(self.inputs.to(device), targets, self.transform)


# --------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------


def _require_dir(data_dir: str | os.PathLike[str] | None, dataset: str, how_to_get: str) -> Path:
    if data_dir is None:
        raise DatasetNotFoundError(
            f"{dataset} is read from files and no data directory was given "
            f"(set RunSpec.data_dir, or --data-dir on the command line); {how_to_get}"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{dataset} data directory {str(path)!r} does not exist or is not a directory; "
            f"{how_to_get}"
        )
    return path


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


# --------------------------------------------------------------------------
# MNIST: IDX files
# --------------------------------------------------------------------------

# IDX type codes (third header byte) and their big-endian numpy types.
_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_MNIST_HOW_TO_GET = (
    "expected the four MNIST IDX files "
    + ", ".join(_MNIST_FILES.values())
    + " (each optionally gzipped, .gz) in that directory or its MNIST/raw sub-directory; "
    "get them from https://ossci-datasets.s3.amazonaws.com/mnist/ (or any MNIST mirror, "
    "or torchvision.datasets.MNIST(root, download=True), then use root/MNIST/raw)"
)


def _read_maybe_gzipped(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFormatError(f"{path}: not a readable gzip file ({error})") from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array of its native type.

    Raises:
        DatasetFormatError: the header is not IDX, or the data length does not
            match the sizes the header declares.
    """
    path = Path(path)
    data = _read_maybe_gzipped(path)
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: {len(data)} bytes is too short for an IDX header")
    zero, type_code, ndim = data[:2], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != b"\x00\x00" or type_code not in _IDX_TYPES or ndim == 0:
        raise DatasetFormatError(
            f"{path}: bad IDX magic number 0x{magic:08x}; an IDX file starts with two zero "
            f"bytes, a type code (0x08 for unsigned bytes) and the number of dimensions "
            f"(MNIST images: 0x00000803, labels: 0x00000801)"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetFormatError(
            f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need "
            f"{header_size})"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_size
    if payload != expected:
        state = "truncated" if payload < expected else "longer than its header says"
        raise DatasetFormatError(
            f"{path}: IDX file {state}: header declares shape {shape} ({expected} bytes of "
            f"data), the file holds {payload}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _find_mnist_file(directories: Sequence[Path], stem: str) -> Path | None:
    # The LeCun site's extracted names use '-', some mirrors use '.' before 'idx'.
    names = [stem, stem.replace("-idx", ".idx")]
    for directory in directories:
        for name in names:
            for candidate in (directory / name, directory / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    return None


@functools.lru_cache(maxsize=4)
def _load_mnist_cached(
    keys: tuple[tuple[str, int, int], ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    paths = [Path(key[0]) for key in keys]
    train_images, train_labels, test_images, test_labels = (read_idx(p) for p in paths)
    for images, labels, image_path, label_path in (
        (train_images, train_labels, paths[0], paths[1]),
        (test_images, test_labels, paths[2], paths[3]),
    ):
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DatasetFormatError(
                f"{image_path}: expected MNIST images, unsigned bytes of shape (N, 28, 28), "
                f"got {images.dtype} of shape {images.shape}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DatasetFormatError(
                f"{label_path}: expected MNIST labels, unsigned bytes of shape (N,), "
                f"got {labels.dtype} of shape {labels.shape}"
            )
        if len(labels) != len(images):
            raise DatasetFormatError(
                f"{label_path}: {len(labels)} labels for the {len(images)} images of "
                f"{image_path.name}"
            )
        if len(labels) == 0:
            raise DatasetFormatError(f"{label_path}: holds no examples")
        if labels.max() > 9:
            raise DatasetFormatError(
                f"{label_path}: labels must be digits 0-9, found {int(labels.max())}"
            )
    return train_images, train_labels.astype(np.int64), test_images, test_labels.astype(np.int64)


def load_mnist(
    data_dir: str | os.PathLike[str] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST from IDX files: ``(train_images, train_labels, test_images, test_labels)``.

    Images are uint8 arrays of shape (N, 28, 28), labels int64 arrays of shape
    (N,). Looks in ``data_dir`` and then ``data_dir/MNIST/raw`` (torchvision's
    layout); each file may be gzipped.
    """
    root = _require_dir(data_dir, "MNIST", _MNIST_HOW_TO_GET)
    directories = [root, root / "MNIST" / "raw"]
    found = {key: _find_mnist_file(directories, stem) for key, stem in _MNIST_FILES.items()}
    missing = [_MNIST_FILES[key] for key, path in found.items() if path is None]
    if missing:
        raise DatasetNotFoundError(
            f"MNIST files missing in {str(root)!r}: {', '.join(missing)}; {_MNIST_HOW_TO_GET}"
        )
    keys = tuple(_file_key(found[key]) for key in _MNIST_FILES)  # type: ignore[arg-type]
    return _load_mnist_cached(keys)


# --------------------------------------------------------------------------
# CIFAR-10: python-pickle batches
# --------------------------------------------------------------------------

_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_CIFAR_HOW_TO_GET = (
    "expected the CIFAR-10 python batches "
    + ", ".join(_CIFAR_FILES)
    + " in that directory or its cifar-10-batches-py sub-directory; get "
    "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
    "there (tar xzf cifar-10-python.tar.gz)"
)

# The only globals a CIFAR batch needs: numpy's array reconstruction, and
# _codecs.encode, which Python 3 uses for bytes in protocol-2 pickles.
_PICKLE_ALLOWED = {
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        target = _PICKLE_ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(*target)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as file:
            batch = _ArraysOnlyUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DatasetFormatError(
            f"{path}: not a CIFAR-10 python batch (unpickling failed: {error})"
        ) from None
    if not isinstance(batch, dict):
        raise DatasetFormatError(
            f"{path}: a CIFAR-10 batch is a dict, this file holds a {type(batch).__name__}"
        )
    entries = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    missing = [key for key in ("data", "labels") if key not in entries]
    if missing:
        raise DatasetFormatError(
            f"{path}: CIFAR-10 batch lacks the key(s) {', '.join(missing)}; it has "
            f"{', '.join(sorted(map(str, entries)))}"
        )
    data = entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        shape = getattr(data, "shape", None)
        raise DatasetFormatError(
            f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} of shape {shape}"
        )
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(
            f"{path}: 'data' rows must hold 3072 values (3 x 32 x 32), got shape {data.shape}"
        )
    try:
        labels = np.asarray(entries["labels"], dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{path}: 'labels' must be a list of integers") from None
    if labels.shape != (len(data),):
        raise DatasetFormatError(
            f"{path}: {labels.shape} labels for {len(data)} images; need one label per image"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFormatError(
            f"{path}: labels must be classes 0-9, found {int(labels.min())}..{int(labels.max())}"
        )
    return data.reshape(-1, 3, 32, 32), labels


@functools.lru_cache(maxsize=2)
def _load_cifar_cached(
    keys: tuple[tuple[str, int, int], ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    batches = [_read_cifar_batch(Path(key[0])) for key in keys]
    train_x = np.concatenate([images for images, _ in batches[:5]])
    train_y = np.concatenate([labels for _, labels in batches[:5]])
    test_x, test_y = batches[5]
    if len(train_x) == 0 or len(test_x) == 0:
        raise DatasetFormatError(
            f"CIFAR-10 batches in {Path(keys[0][0]).parent} hold no "
            f"{'training' if len(train_x) == 0 else 'test'} examples"
        )
    return train_x, train_y, test_x, test_y


def load_cifar10(
    data_dir: str | os.PathLike[str] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 from its python batches: ``(train_x, train_y, test_x, test_y)``.

    Images are uint8 arrays of shape (N, 3, 32, 32), labels int64 arrays of
    shape (N,). ``data_dir`` may be the extracted ``cifar-10-batches-py``
    directory or the directory that contains it.
    """
    root = _require_dir(data_dir, "CIFAR-10", _CIFAR_HOW_TO_GET)
    directory = root / "cifar-10-batches-py"
    if not directory.is_dir():
        directory = root
    missing = [name for name in _CIFAR_FILES if not (directory / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 files missing in {str(directory)!r}: {', '.join(missing)}; "
            f"{_CIFAR_HOW_TO_GET}"
        )
    return _load_cifar_cached(tuple(_file_key(directory / name) for name in _CIFAR_FILES))
