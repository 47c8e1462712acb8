"""Fashion-MNIST from Debian's `dataset-fashion-mnist` (idx files, gzipped)."""
import gzip
import struct
from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format): magic (0, 0, type 0x08 = uint8, ndim), big-endian dims, data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"{path}: not a uint8 idx file (magic {zero:#x} {dtype:#x})")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


def load(split: str, root: Path = DEFAULT_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 N x 1 x 28 x 28 in [0, 1], labels int64) for split 'train' or 't10k'."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' or 't10k', got {split!r}")
    images, labels = root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz"
    if not images.is_file():
        raise FileNotFoundError(f"{images} is missing: apt-get install dataset-fashion-mnist")
    x = torch.from_numpy(read_idx(images).copy()).float().div_(255).unsqueeze(1)
    y = torch.from_numpy(read_idx(labels).astype(np.int64))
    if len(x) != len(y):
        raise ValueError(f"{root}: {len(x)} images but {len(y)} labels")
    return x, y
