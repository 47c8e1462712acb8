"""Users' training data as rows: JSONL (one JSON object per line) or CSV with a header, read with
errors that name the file, the line and the column, before anything is trained or written."""
import csv
import json
from pathlib import Path


def read_records(path) -> list[dict]:
    """The rows of a .jsonl / .json-lines or .csv file (by extension; anything else is tried as
    JSONL when its first character is '{', else as CSV)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"--data {path}: the file is empty")
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson") or (path.suffix.lower() != ".csv" and text.lstrip()[0] == "{")
    rows = []
    if jsonl:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"--data {path}, line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"--data {path}, line {n}: a JSON object per line is expected")
            rows.append(row)
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise ValueError(f"--data {path}: no rows")
    return rows


def column(rows: list[dict], name: str, path, option: str) -> list:
    """The values of one column, or an error naming the option and the columns there are."""
    missing = next((i for i, r in enumerate(rows) if name not in r), None)
    if missing is not None:
        have = ", ".join(sorted(rows[missing])) or "none"
        raise ValueError(f"{option} {name!r}: {path} has no such column in row {missing + 1} (columns: {have})")
    return [r[name] for r in rows]


def as_list(value, where: str) -> list[str]:
    """A list of strings: a JSON list, or in a CSV cell the text of one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: choices must be a list, got {value!r}") from None
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, (str, int, float)) for v in value):
        raise ValueError(f"{where}: choices must be a list of at least 2 strings, got {value!r}")
    return [str(v) for v in value]
