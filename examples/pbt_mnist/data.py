"""Datasets for the PBT MNIST example: real MNIST from IDX files, or digits offline.

MNIST is read from the four standard IDX files (``train-images-idx3-ubyte``
etc., optionally ``.gz``) in ``--data-dir``, with numpy only (torchvision
does not install beside the CPU torch this project pins). ``--download``
fetches them where the internet is reachable. ``digits`` is scikit-learn's
bundled 8x8 digits set: no download, which is what tests and CI use.
"""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from dataclasses import dataclass

import numpy as np

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"


@dataclass
class Dataset:
    """Float32 features scaled to [0, 1] (flattened) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int = 10

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (the MNIST format): magic, dimensions, raw bytes."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        zero, dtype_code, ndim = struct.unpack(">HBB", handle.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, handle.read(4 * ndim))
        data = np.frombuffer(handle.read(), dtype=np.uint8)
    return data.reshape(shape)


def _find(data_dir: str, name: str) -> str:
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"MNIST file {name}[.gz] not found in {data_dir!r}: pass --download where the "
        "internet is reachable, copy the four IDX files there, or use --dataset digits"
    )


def download_mnist(data_dir: str) -> None:
    os.makedirs(data_dir, exist_ok=True)
    for name in MNIST_FILES.values():
        target = os.path.join(data_dir, name + ".gz")
        if not os.path.exists(target):
            urllib.request.urlretrieve(MNIST_MIRROR + name + ".gz", target)


def load_mnist(data_dir: str, limit: int | None = None) -> Dataset:
    arrays = {key: read_idx(_find(data_dir, name)) for key, name in MNIST_FILES.items()}
    x_train = arrays["train_images"].reshape(-1, 28 * 28).astype(np.float32) / 255.0
    x_val = arrays["test_images"].reshape(-1, 28 * 28).astype(np.float32) / 255.0
    y_train = arrays["train_labels"].astype(np.int64)
    y_val = arrays["test_labels"].astype(np.int64)
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    return Dataset(x_train, y_train, x_val, y_val)


def load_digits_dataset(seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return Dataset(x[:split], y[:split], x[split:], y[split:])


def load_dataset(name: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """``mnist`` (IDX files in ``data_dir``) or ``digits`` (bundled with scikit-learn)."""
    if name == "digits":
        return load_digits_dataset()
    if name == "mnist":
        data_dir = data_dir or "data/mnist"
        if download:
            download_mnist(data_dir)
        return load_mnist(data_dir)
    raise ValueError(f"unknown dataset {name!r}: use 'mnist' or 'digits'")
