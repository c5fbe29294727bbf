"""JSONL user tasks: good files load in order; every bad line is named at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlmcore.errors import UserError
from dlmcore.registry import RegistryError
from harness.tasks import files, scoring
from harness.tasks.files import TaskFileError, load_jsonl
from harness.tasks.suite import Example, task_spec


def write(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_a_good_file_loads_in_order_with_default_ids_and_levels(tmp_path: Path):
    p = write(
        tmp_path / "capitals.jsonl",
        [
            {"prompt": "France:", "answer": " Paris"},
            "",
            {"prompt": "Japan:", "answer": " Tokyo", "id": "jp", "level": 2},
            {"prompt": "Peru:", "answer": "Lima", "id": 7},
        ],
    )
    exs = load_jsonl(p)
    assert exs == [
        Example("jsonl:capitals", 0, "France:", " Paris", "capitals-1"),
        Example("jsonl:capitals", 2, "Japan:", " Tokyo", "jp"),
        Example("jsonl:capitals", 0, "Peru:", "Lima", "7"),
    ]
    assert task_spec("jsonl:capitals").max_answer_chars(0) == len(" Tokyo")
    assert scoring.score(exs[0].task, "Paris\t", exs[0].answer)  # whitespace normalisation


def test_the_normalisation_given_is_the_one_score_uses(tmp_path: Path):
    p = write(tmp_path / "sums.jsonl", [{"prompt": "12+30=", "answer": "42"}])
    (ex,) = load_jsonl(p, normalisation="numeric")
    assert scoring.score(ex.task, " 4 2", ex.answer) and scoring.score(ex.task, "42.0", ex.answer)
    (ex,) = load_jsonl(p)  # reloaded with the default: whitespace again
    assert not scoring.score(ex.task, "42.0", ex.answer)
    with pytest.raises(RegistryError, match="Did you mean: numeric"):
        load_jsonl(p, normalisation="numerc")


def test_every_bad_line_is_named_in_one_error(tmp_path: Path):
    p = write(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "ok", "answer": "fine", "id": "a"},  # 1: good
            '{"prompt": "x", "answer": ',  # 2: truncated JSON
            {"prompt": "x"},  # 3: no answer
            {"prompt": 3, "answer": "y"},  # 4: prompt not a string
            {"prompt": "x", "answr": "y", "answer": "y"},  # 5: unknown key
            {"prompt": "x", "answer": "two\nlines"},  # 6: can never match
            {"prompt": "x", "answer": "y", "level": -1},  # 7: bad level
            {"prompt": "x", "answer": "y", "id": "a"},  # 8: duplicate id
            '["prompt", "answer"]',  # 9: not an object
            {"prompt": "x", "answer": "  "},  # 10: empty answer
        ],
    )
    with pytest.raises(TaskFileError) as info:
        load_jsonl(p)
    msg = str(info.value)
    assert f"task file '{p}'" in msg and "9 problem(s)" in msg
    for no, words in [
        (2, "is not valid JSON (Expecting value at column 27)"),
        (3, 'has no "answer"'),
        (4, '"prompt" is 3, not a string'),
        (5, "unknown key(s) 'answr'; Did you mean: answer?"),
        (6, "contains '\\n'"),
        (7, '"level" is -1'),
        (8, "id 'a' is already used on line 1"),
        (9, "is a JSON list, not an object"),
        (10, '"answer" is empty'),
    ]:
        assert f"line {no}: " in msg and words in msg, (no, words)
    assert "line 1:" not in msg
    assert len(info.value.problems) == 9 and isinstance(info.value, UserError)


def test_the_list_is_cut_at_the_limit_with_the_total(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(files, "MAX_REPORTED", 3)
    p = write(tmp_path / "many.jsonl", ["not json"] * 10)
    with pytest.raises(TaskFileError, match=r"10 problem\(s\)") as info:
        load_jsonl(p)
    assert len(info.value.problems) == 3 and "… and 7 more" in str(info.value)
    assert "line 3:" in str(info.value) and "line 4:" not in str(info.value)


def test_non_utf8_and_empty_files(tmp_path: Path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"prompt": "a", "answer": "b"}\n{"prompt": "caf\xe9", "answer": "b"}\n')
    with pytest.raises(TaskFileError, match=r"line 2: is not UTF-8 text"):
        load_jsonl(p)
    p = tmp_path / "blank.jsonl"
    p.write_text("\n  \n")
    with pytest.raises(TaskFileError, match="holds no example"):
        load_jsonl(p)
    with pytest.raises(FileNotFoundError):
        load_jsonl(tmp_path / "missing.jsonl")
