"""A tiny stand-in for ``harness.tasks.suite.suite`` (dependency injection in the tests).

Two tasks with the real suite's format (``"<name>: d d =``" → ``" d d"``): ``echo`` repeats the
digits, ``twice`` repeats them twice; level k has 2k digits. Example i is a pure function of
(task, level, seed, i), like the real suite; ``tiny`` has level 1 only and two possible problems.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class FakeExample:
    """Same fields as ``harness.tasks.suite.Example``."""

    task: str
    level: int
    prompt: str
    answer: str
    id: str


def make(task: str, level: int, seed: int, i: int) -> FakeExample:
    """Example i of (task, level, seed)."""
    r = random.Random(f"{task}/{level}/{seed}/{i}")
    if task == "tiny":
        digits = [str(r.randrange(2))]
    else:
        digits = [str(r.randrange(10)) for _ in range(2 * level)]
    answer = digits * 2 if task == "twice" else digits
    return FakeExample(
        task,
        level,
        f"{task}: {' '.join(digits)} =",
        " " + " ".join(answer),
        f"{task}-L{level}-s{seed}-{i}",
    )


def fake_suite(names=None, levels=None, n_per=32, seed=0) -> list[FakeExample]:
    """``n_per`` examples of every task × level, task by task (the real ``suite`` contract)."""
    out = []
    for name in names or ("echo", "twice"):
        for level in levels or (1, 2):
            out += [make(name, level, seed, i) for i in range(n_per)]
    return out
