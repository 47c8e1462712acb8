"""The demo's data path: the tweets CSV reader and the stratified split (on a small CSV we write)."""
from collections import Counter

from winnow.demo import tweets


def write_csv(path, rows):
    with open(path, "w", encoding="latin-1") as f:
        f.write("sentiment,confidence,text\n")
        for label, text in rows:
            f.write(f'{label},0.9,"{text}"\n')


def test_load_reads_latin1_dedups_and_skips_bad_labels(tmp_path):
    p = tmp_path / "c.csv"
    write_csv(p, [("negative", "caf\xe9 bad"), ("positive", "good"), ("positive", "good"), ("unknown", "x"),
                  ("neutral", "meh")])
    data = tweets.load(p)
    assert data == [("caf\xe9 bad", 0), ("good", 2), ("meh", 1)]


def test_stratified_split_is_fixed_disjoint_and_keeps_class_ratios():
    data = [(f"t{i}", i % 3 if i % 5 else 0) for i in range(3000)]
    a = tweets.stratified_split(data, {"test": 600, "val": 300, "train": None}, seed=0)
    b = tweets.stratified_split(data, {"test": 600, "val": 300, "train": None}, seed=0)
    assert a == b
    texts = [set(t for t, _ in a[k]) for k in ("test", "val", "train")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert sum(len(s) for s in texts) == 3000
    whole = Counter(y for _, y in data)
    test = Counter(y for _, y in a["test"])
    for label, n in whole.items():
        assert abs(test[label] / len(a["test"]) - n / 3000) < 0.01


def test_fashion_idx_reader_round_trips_and_rejects_bad_files(tmp_path):
    import gzip
    import struct

    import numpy as np
    import pytest

    from winnow.demo import fashion

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 4) + images.tobytes())
    assert (fashion.read_idx(path) == images).all()
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">HBB1I", 0, 0x0D, 1, 2) + b"\0" * 8)  # float data: not ours
    with pytest.raises(ValueError, match="uint8"):
        fashion.read_idx(bad)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fashion.load("train", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        fashion.load("val", root=tmp_path)
