"""Image classification data in the torchvision ImageFolder layout, read with Pillow (no
torchvision needed): root/<class>/<image>, or root/train/<class>/... and root/test/<class>/...
for a fixed split."""
import random
from pathlib import Path

import numpy as np
import torch

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _read_split(root: Path, classes: list[str], size: int, mode: str):
    from PIL import Image

    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in EXTENSIONS:
                with Image.open(f) as im:
                    a = np.asarray(im.convert(mode).resize((size, size)), dtype=np.float32) / 255
                xs.append(torch.from_numpy(a.reshape(size, size, -1)).permute(2, 0, 1))
                ys.append(label)
    if not xs:
        raise ValueError(f"{root}: no images ({', '.join(sorted(EXTENSIONS))}) under its class folders")
    return torch.stack(xs), torch.tensor(ys)


def _classes(root: Path) -> list[str]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise ValueError(f"{root}: needs one folder per class (at least 2), found {classes}")
    return classes


def load(root, size: int = 32, test_fraction: float = 0.2, seed: int = 0):
    """((train x, train y), (test x, test y), class names); images as float N x C x size x size
    in [0, 1], C = 1 when every image is grayscale, else 3. Without train/ and test/ folders a
    fixed random test_fraction of each class is held out."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    classes = _classes(root / "train" if split else root)
    first = next(f for d in classes for f in sorted((root / ("train" if split else "") / d).iterdir())
                 if f.suffix.lower() in EXTENSIONS)
    with Image.open(first) as im:
        mode = "L" if im.mode in ("L", "1", "I;16") else "RGB"
    if split:
        return _read_split(root / "train", classes, size, mode), _read_split(root / "test", classes, size, mode), \
            classes
    x, y = _read_split(root, classes, size, mode)
    rng = random.Random(seed)
    test = []
    for label in range(len(classes)):
        idx = [i for i in range(len(y)) if int(y[i]) == label]
        rng.shuffle(idx)
        test += idx[:max(1, round(test_fraction * len(idx)))]
    held = torch.zeros(len(y), dtype=torch.bool)
    held[test] = True
    return (x[~held], y[~held]), (x[held], y[held]), classes
