"""MNIST and CIFAR-10 loaders: tiny files written here in the real formats.

The IDX writer below follows the format as published with MNIST (big-endian
header: two zero bytes, a type code, the number of dimensions, one 32-bit
size per dimension, then the data); the CIFAR-10 batches are pickled dicts
of ``data`` (N x 3072 uint8, channel-major) and ``labels``, protocol 2 with
bytes keys, as the distributed files are read under Python 3.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from optlab.lab.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    load_cifar10,
    load_mnist,
    read_idx,
)
from optlab.lab.runs import RunSpec
from optlab.lab.tasks import _crop_and_flip, get_task
from optlab.lab.train import train

MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        struct.pack(">I", size) for size in array.shape
    )
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    return header + big_endian.tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def tiny_mnist(rng: np.random.Generator, train: int = 48, test: int = 20):
    return {
        "train_images": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, test, dtype=np.uint8),
    }


def write_mnist(directory: Path, arrays: dict, gz: bool = False) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    return {
        key: write(directory / MNIST_NAMES[key], idx_bytes(arrays[key]), gz) for key in MNIST_NAMES
    }


# ------------------------------------------------------------------ IDX / MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loader_reads_idx_files_plain_and_gzipped(tmp_path, gz):
    arrays = tiny_mnist(np.random.default_rng(0))
    write_mnist(tmp_path, arrays, gz=gz)
    train_x, train_y, test_x, test_y = load_mnist(tmp_path)
    assert np.array_equal(train_x, arrays["train_images"])
    assert np.array_equal(test_x, arrays["test_images"])
    assert np.array_equal(train_y, arrays["train_labels"]) and train_y.dtype == np.int64
    assert np.array_equal(test_y, arrays["test_labels"])


def test_mnist_loader_finds_torchvision_layout_and_mixed_compression(tmp_path):
    arrays = tiny_mnist(np.random.default_rng(1))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for i, key in enumerate(MNIST_NAMES):
        write(raw / MNIST_NAMES[key], idx_bytes(arrays[key]), gz=i % 2 == 0)
    assert np.array_equal(load_mnist(tmp_path)[0], arrays["train_images"])


def test_idx_reader_handles_every_type_code_big_endian(tmp_path):
    for dtype, code in [("i2", 0x0B), ("i4", 0x0C), ("f4", 0x0D), ("f8", 0x0E), ("i1", 0x09)]:
        array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
        path = write(tmp_path / f"a-{dtype}", idx_bytes(array, code))
        assert np.array_equal(read_idx(path), array)
        assert read_idx(path).dtype == np.dtype(dtype)


def test_mnist_cnn_trains_a_few_steps_on_tiny_idx_files(tmp_path):
    write_mnist(tmp_path, tiny_mnist(np.random.default_rng(2)), gz=True)
    result = train(
        RunSpec("mnist-cnn", "adam", epochs=2, batch_size=16, data_dir=str(tmp_path)),
        progress=False,
        threads=1,
    )
    assert result.status == "ok"
    assert [row["step"] for row in result.history] == [0, 3, 6]
    # The last sixth of the training file (8 of 48) is held out for validation.
    assert result.info["train_examples"] == 40 and result.info["test_examples"] == 20
    assert result.info["valid_examples"] == 8 and result.info["validation"] == "held-out"
    problem = get_task("mnist-cnn").build(0, str(tmp_path))
    arrays = load_mnist(tmp_path)
    assert np.array_equal(problem.train.inputs.numpy(), arrays[0][:40])
    assert np.array_equal(problem.valid.inputs.numpy(), arrays[0][40:])
    assert np.array_equal(problem.valid.targets.numpy(), arrays[1][40:])
    assert all(0.0 <= row["metric"] <= 1.0 for row in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_a_training_file_too_small_to_hold_out_validation_data_is_one_clear_line(tmp_path, capsys):
    from optlab.cli import main

    write_mnist(tmp_path / "data", tiny_mnist(np.random.default_rng(4), train=1))
    with pytest.raises(DatasetFormatError, match="MNIST training data hold 1 example"):
        get_task("mnist-cnn").build(0, str(tmp_path / "data"))
    argv = ["compare", "--task", "mnist-cnn", "--optimizers", "adam", "--data-dir"]
    argv += [str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "at least 2 are needed" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_mnist_files_are_named_with_where_to_get_them(tmp_path):
    arrays = tiny_mnist(np.random.default_rng(3))
    paths = write_mnist(tmp_path, arrays)
    paths["test_labels"].unlink()
    with pytest.raises(DatasetNotFoundError) as error:
        load_mnist(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "t10k-labels-idx1-ubyte" in message.split(";")[0]
    assert "train-images-idx3-ubyte" not in message.split(";")[0]
    assert "https://" in message and ".gz" in message
    with pytest.raises(DatasetNotFoundError, match="does not exist or is not a directory"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="MNIST files missing"):
        train(RunSpec("mnist-cnn", "adam", data_dir=str(tmp_path)), progress=False)


def corrupt(arrays: dict, kind: str) -> tuple[str, bytes, str]:
    """(which file, its bytes, expected message) for one kind of malformed MNIST file."""
    images = idx_bytes(arrays["train_images"])
    labels = idx_bytes(arrays["train_labels"])
    if kind == "bad magic":
        return "train_images", b"\x1f\x00\x08\x03" + images[4:], "bad IDX magic number 0x1f000803"
    if kind == "unknown type code":
        return "train_labels", b"\x00\x00\x07\x01" + labels[4:], "bad IDX magic number 0x00000701"
    if kind == "truncated data":
        return "train_images", images[:-5], r"truncated: header declares shape \(48, 28, 28\)"
    if kind == "truncated header":
        return "train_images", images[:10], "truncated IDX header"
    if kind == "trailing bytes":
        return "train_labels", labels + b"\x00", "longer than its header says"
    if kind == "empty":
        return "train_labels", b"", "too short for an IDX header"
    if kind == "wrong image size":
        small = arrays["train_images"][:, :20, :20].copy()
        return "train_images", idx_bytes(small), r"expected MNIST images.*\(48, 20, 20\)"
    if kind == "images as labels":
        return "train_labels", images, "expected MNIST labels"
    if kind == "count mismatch":
        return "train_labels", idx_bytes(arrays["train_labels"][:40]), "40 labels for the 48"
    if kind == "label out of range":
        bad = arrays["train_labels"].copy()
        bad[3] = 10
        return "train_labels", idx_bytes(bad), "labels must be digits 0-9, found 10"
    if kind == "float images":
        as_float = arrays["train_images"].astype(np.float32)
        return "train_images", idx_bytes(as_float, 0x0D), "unsigned bytes"
    raise AssertionError(kind)


KINDS = [
    "bad magic",
    "unknown type code",
    "truncated data",
    "truncated header",
    "trailing bytes",
    "empty",
    "wrong image size",
    "images as labels",
    "count mismatch",
    "label out of range",
    "float images",
]


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_mnist_files_are_rejected_naming_the_file(tmp_path, kind):
    arrays = tiny_mnist(np.random.default_rng(4))
    paths = write_mnist(tmp_path, arrays)
    which, data, message = corrupt(arrays, kind)
    paths[which].write_bytes(data)
    with pytest.raises(DatasetFormatError, match=message) as error:
        load_mnist(tmp_path)
    assert MNIST_NAMES[which] in str(error.value)


def test_corrupt_gzip_is_rejected(tmp_path):
    arrays = tiny_mnist(np.random.default_rng(5))
    paths = write_mnist(tmp_path, arrays, gz=True)
    data = paths["test_images"].read_bytes()
    paths["test_images"].write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte.gz: not a readable gzip"):
        load_mnist(tmp_path)


def test_rewritten_files_are_read_again_not_served_from_the_cache(tmp_path):
    first = tiny_mnist(np.random.default_rng(6))
    paths = write_mnist(tmp_path, first)
    load_mnist(tmp_path)
    second = tiny_mnist(np.random.default_rng(7), train=32)
    write_mnist(tmp_path, second)
    stat = paths["train_images"].stat()
    os.utime(paths["train_images"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert np.array_equal(load_mnist(tmp_path)[0], second["train_images"])


# ------------------------------------------------------------------ CIFAR-10


def cifar_batch(rng: np.random.Generator, n: int, label: bytes) -> dict:
    return {
        b"batch_label": label,
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar(root: Path, seed: int = 0, per_batch: int = 6, test: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(rng, per_batch, b"training") for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(rng, test, b"testing batch 1 of 1")
    for name, batch in batches.items():
        with (directory / name).open("wb") as file:
            pickle.dump(batch, file, protocol=2)
    return batches


def test_cifar_loader_reads_the_python_batches(tmp_path):
    batches = write_cifar(tmp_path)
    train_x, train_y, test_x, test_y = load_cifar10(tmp_path)
    expected_x = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    expected_y = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert train_x.shape == (30, 3, 32, 32) and train_x.dtype == np.uint8
    # Rows are channel-major: 1024 red, then green, then blue values.
    assert np.array_equal(train_x.reshape(30, 3072), expected_x)
    assert np.array_equal(train_x[4, 2, 31, 0], expected_x[4, 2048 + 31 * 32])
    assert train_y.tolist() == expected_y
    assert np.array_equal(test_x.reshape(10, 3072), batches["test_batch"][b"data"])
    assert test_y.tolist() == batches["test_batch"][b"labels"]
    # The extracted directory itself works as data_dir too.
    assert np.array_equal(load_cifar10(tmp_path / "cifar-10-batches-py")[0], train_x)


def test_cifar_resnet_trains_a_few_steps_on_tiny_batches(tmp_path):
    write_cifar(tmp_path)
    result = train(
        RunSpec(
            "cifar10-resnet", "sgd", {"lr": 0.05}, epochs=1, batch_size=8, data_dir=str(tmp_path)
        ),
        progress=False,
        threads=1,
    )
    assert result.status == "ok"
    assert [row["step"] for row in result.history] == [0, 4]
    # The last tenth of the training batches (3 of 30) is held out for validation.
    assert result.info["train_examples"] == 27 and result.info["test_examples"] == 10
    assert result.info["valid_examples"] == 3
    problem = get_task("cifar10-resnet").build(0, str(tmp_path))
    train_x, train_y, _, _ = load_cifar10(tmp_path)
    assert np.array_equal(problem.valid.inputs.numpy(), train_x[27:])
    assert np.array_equal(problem.valid.targets.numpy(), train_y[27:])


def test_crop_and_flip_matches_a_per_image_reference():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8).float()
    augmented = _crop_and_flip(images, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 9, (5, 2), generator=generator)
    flips = torch.rand(5, generator=generator) < 0.5
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)))
    for i in range(5):
        top, left = offsets[i].tolist()
        expected = padded[i, :, top : top + 32, left : left + 32]
        if flips[i]:
            expected = expected[:, :, ::-1]
        assert np.array_equal(augmented[i].numpy(), expected)


def write_batch(root: Path, name: str, obj: object) -> None:
    with (root / "cifar-10-batches-py" / name).open("wb") as file:
        pickle.dump(obj, file, protocol=2)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"labels": [1, 2]}, r"lacks the key\(s\) data"),
        (
            {b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]},
            r"3072 values \(3 x 32 x 32\), got shape \(2, 3000\)",
        ),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, "must be a uint8 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "one label per image"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]}, "classes 0-9"),
        ([1, 2, 3], "a CIFAR-10 batch is a dict, this file holds a list"),
    ],
)
def test_malformed_cifar_batches_are_rejected_naming_the_file(tmp_path, batch, message):
    write_cifar(tmp_path)
    write_batch(tmp_path, "data_batch_3", batch)
    with pytest.raises(DatasetFormatError, match=message) as error:
        load_cifar10(tmp_path)
    assert "data_batch_3" in str(error.value)


def test_truncated_cifar_batch_is_rejected(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetFormatError, match="test_batch: not a CIFAR-10 python batch"):
        load_cifar10(tmp_path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch should-not-exist",))


def test_cifar_loader_refuses_pickles_that_would_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path)
    write_batch(tmp_path, "data_batch_1", {b"data": _Exploit(), b"labels": []})
    with pytest.raises(DatasetFormatError, match="refusing to load"):
        load_cifar10(tmp_path)
    assert not (tmp_path / "should-not-exist").exists()


def test_missing_cifar_files_are_named_with_where_to_get_them(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(DatasetNotFoundError) as error:
        load_cifar10(tmp_path)
    message = str(error.value)
    assert "cifar-10-batches-py" in message and "data_batch_5" in message.split(";")[0]
    assert "cifar-10-python.tar.gz" in message and "https://www.cs.toronto.edu" in message
