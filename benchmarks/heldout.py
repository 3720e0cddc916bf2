"""Held-back test images for benchmarks: the Fashion-MNIST *test* set, which the bundled sample
(drawn from the training set) never saw, written as an image folder with the bundled class names.

Source: the Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``),
which installs the original IDX files under /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
# Fashion-MNIST label ids -> the folder names of data/fashion-mnist-mini
CLASS_NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped) as a numpy array: magic, dimensions, then unsigned bytes."""
    data = gzip.decompress(path.read_bytes())
    dimensions = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def write_test_folder(target: Path, per_class: int) -> Path:
    """The first ``per_class`` test images of each class under ``target/<class>/``; reused when present."""
    done = target / ".complete"
    if done.is_file() and done.read_text() == str(per_class):
        return target
    if not (IDX_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"{IDX_DIR} is missing: apt-get install dataset-fashion-mnist")
    images = read_idx(IDX_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(IDX_DIR / "t10k-labels-idx1-ubyte.gz")
    for label, name in enumerate(CLASS_NAMES):
        folder = target / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            Image.fromarray(images[index], mode="L").save(folder / f"test{index:05d}.png")
    done.write_text(str(per_class))
    return target
