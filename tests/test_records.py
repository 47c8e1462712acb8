"""winnow.records (users' JSONL / CSV data) and the QuaRTz row parser: rows read, and every bad
input refused with one line naming the file, line or column."""
import json

import pytest

from winnow.demo import quartz
from winnow.records import as_list, column, read_records


def test_jsonl_and_csv_rows(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text(json.dumps({"q": "a?", "choices": ["x", "y"], "answer": 1}) + "\n\n" + json.dumps({"q": "b?"}) + "\n")
    assert read_records(j) == [{"q": "a?", "choices": ["x", "y"], "answer": 1}, {"q": "b?"}]
    c = tmp_path / "d.csv"
    c.write_text('q,choices,answer\na?,"[""x"", ""y""]",B\n')
    rows = read_records(c)
    assert rows == [{"q": "a?", "choices": '["x", "y"]', "answer": "B"}]
    assert as_list(rows[0]["choices"], "row 1") == ["x", "y"]


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("{\"a\": 1}\n{oops\n", "line 2: not valid JSON"),
    ("[1, 2]\n", "line 1: a JSON object per line"),
])
def test_bad_files_are_named(tmp_path, content, message):
    p = tmp_path / "d.jsonl"
    p.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_records(p)
    with pytest.raises(ValueError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")


def test_missing_column_and_bad_choices_are_named(tmp_path):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c"}]
    assert column(rows[:1], "prompt", "d.jsonl", "--prompt-column") == ["a"]
    with pytest.raises(ValueError, match=r"--response-column 'response': d.jsonl has no such column in row 2 "
                                         r"\(columns: prompt\)"):
        column(rows, "response", "d.jsonl", "--response-column")
    for bad in ("x", '"x"', "[\"only one\"]", 3, {"a": 1}):
        with pytest.raises(ValueError, match="choices must be a list"):
            as_list(bad, "row 1")


def test_quartz_rows_parse_into_question_choices_answer():
    row = {"input": [{"role": "system", "content": "The following are multiple choice questions ..."},
                     {"role": "user", "content": "As you monitor sound waves closer to a speaker they become\n\n"
                                                 " A: louder\n B: quieter"}], "ideal": "B"}
    assert quartz.parse(row) == ("As you monitor sound waves closer to a speaker they become", ["louder", "quieter"], 1)
    with pytest.raises(ValueError, match="not a two-option QuaRTz question"):
        quartz.parse({"input": [{"role": "user", "content": "no options here"}], "ideal": "A"})
