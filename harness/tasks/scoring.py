"""Answers from generations, named normalisations, exact match, and accuracy with a CI.

Three steps per example (``docs/tasks.md``, Scoring):

1. :func:`predict_answer` — the generated text (the tokens after the prompt, decoded) cut at
   its first end marker: a newline or ``<|endoftext|>`` (or the stop strings given, e.g. an
   lm-eval task's ``until``). Nothing else is removed.
2. :func:`normalise` — both the prediction and the reference pass through the task's named
   normalisation (:data:`NORMALISATIONS`): ``exact`` (unchanged), ``strip`` (outer whitespace),
   ``whitespace`` (outer whitespace stripped, inner runs collapsed to one space: the built-in
   tasks'), ``casefold`` (``whitespace`` then case-folded), ``numeric`` (whitespace and ``,``
   removed, read as a decimal number, written canonically: ``"1,399"``, ``" 1 3 9 9"``,
   ``"1399.0"`` are all ``1399``; not a number → no match).
3. :func:`score` — equal after normalisation. :func:`accuracy_ci` turns a cell's list of
   right/wrong into accuracy with a percentile-bootstrap confidence interval.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from dlmcore.errors import UserError, short_repr
from dlmcore.registry import Registry
from harness.tasks.suite import TaskSpec, task_spec

EOS_TEXT = "<|endoftext|>"
"""The shipped tokenizer's end-of-text token as decoded text."""

END_MARKERS: tuple[str, ...] = ("\n", EOS_TEXT)
"""Where an answer ends: the first of these in the generated text."""


class ScoringError(UserError, ValueError):
    """A reference that its normalisation cannot read, or bad accuracy-CI arguments."""


# --------------------------------------------------------------------------------------------
# 1. the answer
# --------------------------------------------------------------------------------------------


def predict_answer(generated_text: str, stops: Sequence[str] = END_MARKERS) -> str:
    """``generated_text`` up to (not including) the first of ``stops``; all of it if none.

    Args:
        generated_text: the decoded generation after the prompt.
        stops: end markers; empty strings are ignored.
    """
    cut = len(generated_text)
    for s in stops:
        if s:
            i = generated_text.find(s)
            if 0 <= i < cut:
                cut = i
    return generated_text[:cut]


# --------------------------------------------------------------------------------------------
# 2. normalisations
# --------------------------------------------------------------------------------------------

Normaliser = Callable[[str], "str | None"]
NORMALISATIONS: Registry[Normaliser] = Registry("normalisation")
"""name → ``f(text) -> canonical text``, or None where the text has no canonical form."""

_SPACE = re.compile(r"\s+")


@NORMALISATIONS.register("exact")
def norm_exact(text: str) -> str:
    """The text unchanged."""
    return text


@NORMALISATIONS.register("strip")
def norm_strip(text: str) -> str:
    """Leading and trailing whitespace removed."""
    return text.strip()


@NORMALISATIONS.register("whitespace")
def norm_whitespace(text: str) -> str:
    """Stripped, and every inner run of whitespace (spaces, tabs) replaced by one space."""
    return _SPACE.sub(" ", text).strip()


@NORMALISATIONS.register("casefold")
def norm_casefold(text: str) -> str:
    """``whitespace``, then case-folded (``"Straße"`` matches ``"STRASSE"``)."""
    return norm_whitespace(text).casefold()


@NORMALISATIONS.register("numeric")
def norm_numeric(text: str) -> str | None:
    """The number written in ``text`` (whitespace and ``,`` ignored) in canonical form.

    ``"1,399"``, ``" 1 3 9 9"``, ``"+1399"``, ``"1399.00"`` → ``"1399"``; ``"-0"`` → ``"0"``;
    ``"0.50"`` → ``"0.5"``. Not a finite decimal number (``"12a"``, ``""``, ``"nan"``) → None.
    """
    compact = _SPACE.sub("", text).replace(",", "")
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", compact):
        return None
    try:
        value = Decimal(compact)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid literals
        return None
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def normalise(text: str, normalisation: str) -> str | None:
    """``text`` under the named normalisation (None: no canonical form, i.e. never a match).

    Raises:
        dlmcore.registry.RegistryError: unknown normalisation (did-you-mean).
    """
    return NORMALISATIONS.get(normalisation)(text)


# --------------------------------------------------------------------------------------------
# 3. exact match
# --------------------------------------------------------------------------------------------


def match(prediction: str, answer: str, normalisation: str, task: str = "?") -> bool:
    """Whether ``prediction`` equals ``answer`` after ``normalisation``.

    Raises:
        ScoringError: the reference has no canonical form (e.g. not a number under
            ``numeric``): the task is mis-specified, not the model wrong.
    """
    want = normalise(answer, normalisation)
    if want is None:
        raise ScoringError(
            f"the reference answer {short_repr(answer)} of task '{task}' cannot be read under "
            f"normalisation '{normalisation}'; use a normalisation that fits the answers "
            f"({', '.join(NORMALISATIONS.names())})."
        )
    got = normalise(prediction, normalisation)
    return got is not None and got == want


def score(
    task_or_spec: str | TaskSpec, prediction: str, answer: str, prompt: str | None = None
) -> bool:
    """Whether ``prediction`` is right.

    Exact match with ``answer`` under the task's normalisation, or, for a task with many right
    answers (``TaskSpec.verify``, e.g. ``shuffle``), the task's own check of the normalised
    prediction against the prompt.

    Args:
        task_or_spec: a :class:`TaskSpec`, or a task name (built-in, a file / lm-eval task
            loaded in this process, or ``jsonl:…`` / ``lmeval:…``).
        prediction: the model's answer (:func:`predict_answer` of its generation).
        answer: the reference.
        prompt: the example's prompt; required by tasks with a ``verify``.

    Raises:
        dlmcore.registry.RegistryError: unknown task name.
        ScoringError: see :func:`match`; or a ``verify`` task scored without its prompt.
    """
    spec = task_or_spec if isinstance(task_or_spec, TaskSpec) else task_spec(task_or_spec)
    if spec.verify is None:
        return match(prediction, answer, spec.normalisation, spec.name)
    if prompt is None:
        raise ScoringError(
            f"task '{spec.name}' has many right answers and is scored against its prompt; "
            "pass prompt= to score()."
        )
    got = normalise(prediction, spec.normalisation)
    return got is not None and bool(spec.verify(prompt, got))


# --------------------------------------------------------------------------------------------
# accuracy with a bootstrap CI
# --------------------------------------------------------------------------------------------


def accuracy_ci(
    correct: Sequence[bool], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Accuracy and its percentile-bootstrap confidence interval.

    The percentile bootstrap of a proportion: resample the n results with replacement
    ``n_boot`` times and take the ``(1 ∓ level) / 2`` quantiles (numpy's default linear
    interpolation) of the resampled accuracies. The number of successes in one resample of n
    results of which k are right is exactly Binomial(n, k / n), so each resample is drawn as
    that count (``numpy.random.default_rng(seed).binomial``): the same distribution as
    resampling indices, in O(n_boot) memory whatever n is.

    Returns:
        ``(accuracy, lo, hi)``; NaNs for no results.

    Raises:
        ScoringError: ``n_boot`` < 1 or ``level`` outside (0, 1).
    """
    import numpy as np

    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ScoringError(f"n_boot must be a positive integer; got {short_repr(n_boot)}.")
    if not 0.0 < float(level) < 1.0:
        raise ScoringError(f"level must be in (0, 1), e.g. 0.95; got {short_repr(level)}.")
    x = np.asarray(correct, dtype=bool)
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan
    k = int(x.sum())
    means = np.random.default_rng(seed).binomial(n, k / n, size=n_boot) / n
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return k / n, float(lo), float(hi)
