"""User tasks from a JSONL file: one ``{"prompt": str, "answer": str}`` object per line.

Optional keys: ``id`` (text or integer, unique in the file; default ``<stem>-<line>``) and
``level`` (integer ≥ 0; default 0). Blank lines are skipped; any other key is refused (a
misspelt ``"answr"`` would otherwise pass silently). The examples' task is ``jsonl:<stem>``,
scored with the ``normalisation`` given to :func:`load_jsonl` (``whitespace`` by default).

Every bad line is reported at once (up to :data:`MAX_REPORTED`), each with the file and its
line number, in one :class:`TaskFileError`; nothing is returned from a file with a bad line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dlmcore.errors import UserError, short_repr
from dlmcore.registry import did_you_mean
from harness.tasks.scoring import END_MARKERS, NORMALISATIONS
from harness.tasks.suite import Example, TaskSpec, register_user_task

MAX_REPORTED = 20
"""The most bad lines one error lists (their total count is always given)."""

MAX_FILE_BYTES = 1 << 30
"""A task file larger than this is refused before it is read."""

KEYS_REQUIRED = ("prompt", "answer")
KEYS_OPTIONAL = ("id", "level")


class TaskFileError(UserError, ValueError):
    """A task file that cannot be used; ``problems`` holds one sentence per bad line."""

    def __init__(self, path: Path, problems: list[str], total: int | None = None) -> None:
        self.problems = list(problems)
        total = len(problems) if total is None else total
        more = f"\n  … and {total - len(problems)} more" if total > len(problems) else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"task file '{path}' cannot be used ({total} problem(s)); each line must be a JSON "
            "object "
            f'{{"prompt": "...", "answer": "..."}} (optional "id", "level"):\n{lines}{more}'
        )


def task_name(path: str | os.PathLike[str]) -> str:
    """The task name of a file's examples: ``jsonl:<stem>``."""
    return f"jsonl:{Path(path).stem}"


def _line_problems(obj: Any) -> list[str]:
    """What is wrong with one parsed line (empty: nothing)."""
    if not isinstance(obj, dict):
        return [f"is a JSON {type(obj).__name__}, not an object"]
    out = [f'has no "{k}"' for k in KEYS_REQUIRED if k not in obj]
    unknown = sorted(set(obj) - set(KEYS_REQUIRED) - set(KEYS_OPTIONAL))
    if unknown:
        allowed = KEYS_REQUIRED + KEYS_OPTIONAL
        hints = "".join(did_you_mean(k, allowed) for k in unknown)
        out.append(
            f"has unknown key(s) {', '.join(map(repr, unknown))};{hints} allowed: "
            f"{', '.join(allowed)}"
        )
    for key in KEYS_REQUIRED:
        v = obj.get(key)
        if key in obj and not isinstance(v, str):
            out.append(f'"{key}" is {short_repr(v)}, not a string')
        elif isinstance(v, str) and not v.strip():
            out.append(f'"{key}" is empty')
    answer = obj.get("answer")
    if isinstance(answer, str):
        ends = [m for m in END_MARKERS if m in answer]
        if ends:
            out.append(
                f'"answer" contains {", ".join(map(repr, ends))}, where every prediction is cut '
                "(an answer ends at the first newline or end-of-text), so it could never match"
            )
    level = obj.get("level", 0)
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 1000:
        out.append(f'"level" is {short_repr(level)}; use an integer in [0, 1000]')
    ident = obj.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, str | int)):
        out.append(f'"id" is {short_repr(ident)}; use a string or an integer')
    return out


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line; a non-UTF-8 line is a problem, not a crash."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TaskFileError(path, [f"the file is {size} bytes; the limit is {MAX_FILE_BYTES}"])
    out, bad = [], []
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append(f"line {no}: is not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            if text.strip():
                out.append((no, text))
    if bad:
        raise TaskFileError(path, bad[:MAX_REPORTED], len(bad))
    return out


def load_jsonl(path: str | os.PathLike[str], normalisation: str = "whitespace") -> list[Example]:
    """The examples of a JSONL task file, in file order.

    Args:
        path: the file.
        normalisation: how predictions are compared with its answers (registered for the
            task ``jsonl:<stem>`` in this process, so ``scoring.score(example.task, …)`` uses it).

    Raises:
        TaskFileError: bad lines (all of them, up to :data:`MAX_REPORTED`, each with its line
            number), duplicate ids, or no example at all.
        FileNotFoundError, PermissionError, IsADirectoryError: the path cannot be read.
        dlmcore.registry.RegistryError: unknown normalisation.
    """
    NORMALISATIONS.get(normalisation)
    path = Path(path)
    name = task_name(path)
    problems: list[str] = []
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for no, text in _read_lines(path):
        try:
            obj = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            problems.append(f"line {no}: is not valid JSON ({e.msg} at column {e.colno})")
            continue
        bad = _line_problems(obj)
        if bad:
            problems.append(f"line {no}: " + "; ".join(bad))
            continue
        ident = str(obj.get("id", f"{path.stem}-{no}"))
        if ident in seen:
            problems.append(f"line {no}: id {ident!r} is already used on line {seen[ident]}")
            continue
        seen[ident] = no
        examples.append(Example(name, obj.get("level", 0), obj["prompt"], obj["answer"], ident))
    if problems:
        raise TaskFileError(path, problems[:MAX_REPORTED], len(problems))
    if not examples:
        raise TaskFileError(path, ["the file holds no example (every line is blank)"])
    longest = max(len(e.answer) for e in examples)
    register_user_task(
        TaskSpec(name, f"examples of {path.name}", (), normalisation, None, lambda _: longest)
    )
    return examples
