"""Task rows for prompt-conditioned training: the row layout, held-out splits and the mixture.

A task example (``harness.tasks.suite.Example``: ``task``, ``level``, ``prompt``, ``answer``,
``id``; e.g. prompt ``"add: 482+917="``, answer ``"1399"``) becomes one training row of length L::

    [BOS] prompt-tokens answer-tokens [EOS] [EOS] … [EOS]        (padded with EOS to L)
    |<---- positions [0, P) ---->|

The prompt is BOS plus the prompt tokens, P = 1 + len(prompt tokens): the positions the samplers'
prompt support never masks. Prompt and answer are tokenised separately (the decoder is handed the
prompt tokens and must produce the answer tokens), and at least one EOS follows the answer, so a
decoder knows where the answer ends. The objectives score every position ≥ P, the EOS padding
included (that is how a diffusion model learns to end the answer).

Held-out validation examples are drawn with their own seed; every training example whose ``id``
or whose (task, level, prompt) equals a validation example's is removed from the training pool,
so no validation problem is ever trained on. Corpus windows (``harness.train.corpus.make_rows``)
join task rows in a :func:`mixed_batches` stream as unconditional rows (prompt length 0).

Shapes: n = examples, L = row length, b = rows per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dlmcore.configio import ConfigError
from dlmcore.errors import short_repr


class ExampleLike(Protocol):
    """What this module reads from a task example (``harness.tasks.suite.Example``)."""

    task: str
    level: Any
    prompt: str
    answer: str
    id: str


SuiteFn = Callable[..., list[Any]]
"""``suite(names=None, levels=None, n_per=..., seed=...) -> list[Example]``."""


class Tokenizer(Protocol):
    """The part of ``harness.train.tokenizer.TextTokenizer`` used here."""

    bos_id: int
    eos_id: int

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text, no BOS/EOS added."""
        ...


def default_suite() -> SuiteFn:
    """``harness.tasks.suite.suite`` (imported on demand).

    Raises:
        ConfigError: the task suite package is missing.
    """
    try:
        from harness.tasks.suite import suite
    except ImportError as e:
        raise ConfigError(
            [
                f"the task suite harness.tasks.suite cannot be imported ({e}); 'data' tasks or mix "
                "needs it. Use data: corpus, or install the task suite."
            ]
        ) from None
    return suite


def cell(ex: ExampleLike) -> tuple[str, str]:
    """The (task, level) cell of an example, both as text (log column ``acc:<task>:<level>``)."""
    return str(ex.task), str(ex.level)


# ---------------------------------------------------------------------------------------------
# Row layout
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedTasks:
    """Task examples laid out as rows.

    Attributes:
        rows: (n, L) int64, ``[BOS] prompt answer [EOS] …`` padded with EOS.
        prompt_len: (n,) int64, P = 1 + prompt tokens.
        answer_len: (n,) int64, answer tokens (EOS not counted).
        examples: the n examples, in row order.
    """

    rows: np.ndarray
    prompt_len: np.ndarray
    answer_len: np.ndarray
    examples: tuple[Any, ...]


def encode_tasks(examples: Sequence[ExampleLike], tok: Tokenizer, seq_len: int) -> EncodedTasks:
    """Lay ``examples`` out as rows of length ``seq_len`` (see the module docstring).

    Raises:
        ConfigError: the longest example needs more than ``seq_len`` positions (BOS, prompt,
            answer and one EOS); the message names it and the ``seq_len`` it needs.
    """
    prompts = tok.encode_batch([ex.prompt for ex in examples])
    answers = tok.encode_batch([ex.answer for ex in examples])
    need = [2 + len(p) + len(a) for p, a in zip(prompts, answers, strict=True)]
    if need and max(need) > seq_len:
        i = int(np.argmax(need))
        ex = examples[i]
        raise ConfigError(
            [
                f"'seq_len' is {seq_len} but task {ex.task!r} level {ex.level!r} needs {need[i]} "
                f"positions ([BOS] + {len(prompts[i])} prompt + {len(answers[i])} answer tokens + "
                f"[EOS]) for example {short_repr(ex.id)} (prompt {short_repr(ex.prompt)}); set "
                f"seq_len to at least {need[i]} or drop that level from 'task_levels'."
            ]
        )
    n = len(examples)
    rows = np.full((n, seq_len), tok.eos_id, dtype=np.int64)
    for r, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        rows[r, : 1 + len(p) + len(a)] = [tok.bos_id, *p, *a]
    return EncodedTasks(
        rows=rows,
        prompt_len=np.array([1 + len(p) for p in prompts], dtype=np.int64),
        answer_len=np.array([len(a) for a in answers], dtype=np.int64),
        examples=tuple(examples),
    )


# ---------------------------------------------------------------------------------------------
# Held-out split
# ---------------------------------------------------------------------------------------------


def split_examples(
    suite_fn: SuiteFn,
    tasks: Sequence[str] | None,
    levels: Sequence[Any] | None,
    pool_per: int,
    val_per: int,
    seed: int,
    val_seed: int,
) -> tuple[list[Any], list[Any]]:
    """The training pool and the held-out validation examples.

    Validation: ``val_per`` examples per (task, level) drawn with ``val_seed``. Training:
    ``pool_per`` per (task, level) drawn with ``seed``, minus every example whose id or whose
    (task, level, prompt) occurs in validation.

    Returns:
        (train, val), each in the suite's order.

    Raises:
        ConfigError: a (task, level) cell has no training example left.
    """
    names = list(tasks) if tasks is not None else None
    lv = list(levels) if levels is not None else None
    val = suite_fn(names=names, levels=lv, n_per=val_per, seed=val_seed)
    pool = suite_fn(names=names, levels=lv, n_per=pool_per, seed=seed)
    held_ids = {ex.id for ex in val}
    held = {(*cell(ex), ex.prompt) for ex in val}
    train = [ex for ex in pool if ex.id not in held_ids and (*cell(ex), ex.prompt) not in held]
    left = {cell(ex) for ex in train}
    empty = sorted({cell(ex) for ex in pool} - left)
    if empty:
        raise ConfigError(
            [
                f"task {t!r} level {lv!r} has no training example left after removing the "
                f"{val_per} held-out ones (it has too few distinct problems); lower 'task_val_per' "
                "or drop that level from 'task_levels'."
                for t, lv in empty
            ]
        )
    return train, val


# ---------------------------------------------------------------------------------------------
# The mixture
# ---------------------------------------------------------------------------------------------


def task_rows_per_batch(batch_size: int, task_fraction: float) -> int:
    """Task rows in every batch: round(task_fraction · b)."""
    return int(round(task_fraction * batch_size))


def _endless(n: int, seed: int) -> Iterator[int]:
    """Row indices of endless epochs, a fresh seeded permutation each (epoch e: seed + e)."""
    epoch = 0
    while True:
        yield from np.random.default_rng(seed + epoch).permutation(n).tolist()
        epoch += 1


def mixed_batches(
    task_rows: np.ndarray,
    task_prompt_len: np.ndarray,
    corpus_rows: np.ndarray | None,
    batch_size: int,
    n_task: int,
    seed: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches of ``n_task`` task rows and ``b − n_task`` corpus rows, rows shuffled.

    Each stream walks its own seeded epochs. The rows of a batch are put in a random order
    (seeded): the objectives give row i the antithetic stratum i of t, so a fixed layout would
    tie the task rows to the low noise levels.

    Args:
        task_rows: (n_t, L) task rows.
        task_prompt_len: (n_t,) their prompt lengths.
        corpus_rows: (n_c, L) corpus windows (prompt length 0); may be None if n_task = b.
        batch_size: b.
        n_task: task rows per batch, 0 … b.
        seed: seed of both streams and of the in-batch order.

    Yields:
        (rows (b, L) int64, prompt_len (b,) int64).

    Raises:
        ValueError: ``n_task`` outside [0, b], or a stream is needed but empty.
    """
    if not 0 <= n_task <= batch_size:
        raise ValueError(f"n_task is {n_task}; allowed 0 … batch_size ({batch_size}).")
    n_corpus = batch_size - n_task
    if n_task and len(task_rows) == 0:
        raise ValueError("no task rows to draw from.")
    if n_corpus and (corpus_rows is None or len(corpus_rows) == 0):
        raise ValueError("no corpus rows to draw from.")
    t_idx = _endless(len(task_rows), seed)
    c_idx = _endless(len(corpus_rows), seed + 1_000_003) if n_corpus else iter(())
    order_rng = np.random.default_rng([seed, 7])
    while True:
        ti = [next(t_idx) for _ in range(n_task)]
        ci = [next(c_idx) for _ in range(n_corpus)]
        parts = [task_rows[ti]] + ([corpus_rows[ci]] if n_corpus else [])  # type: ignore[index]
        rows = np.concatenate(parts, axis=0).astype(np.int64)
        plen = np.concatenate([task_prompt_len[ti], np.zeros(n_corpus, dtype=np.int64)])
        perm = order_rng.permutation(batch_size)
        yield rows[perm], plen[perm]
