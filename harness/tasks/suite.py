"""The built-in offline task suite: prompts and references generated from a seed.

Eight tasks, each at three difficulty levels (1, 2, 3: longer inputs), each designed so that the
tokens of its answer depend on each other — the case where unmasking many tokens per network
call (parallel decoding) can fail while one token per call does not (``docs/tasks.md`` says why
for each). Level 1 of each (sizes of levels 1 / 2 / 3 in brackets):

- ``copy: 3 9 1 4 =`` → `` 3 9 1 4`` (4 / 8 / 16 digits)
- ``reverse: 3 9 1 4 =`` → `` 4 1 9 3`` (4 / 8 / 16 digits)
- ``sort: 3 9 1 4 =`` → `` 1 3 4 9`` (4 / 8 / 16 digits)
- ``add: 4 8 + 9 1 =`` → `` 1 3 9`` (2 / 4 / 8-digit terms)
- ``kv: a=3 b=7 c=1 d=0 ; b =`` → `` 7`` (4 pairs × 1 digit / 8 × 2 / 16 × 3)
- ``brackets: ( [ ] { =`` → `` } )`` (3–4 / 7–8 / 15–16 brackets)
- ``phrase: the old man walked =`` → `` the old man walked`` (4 / 8 / 17 words)
- ``shuffle: 3 9 1 4 =`` → any order of the digits, e.g. `` 4 1 3 9`` (4 / 8 / 10 distinct
  digits): many right answers, scored by a check, not by the reference; not in the default set
  (``default_tasks``), so it must be named

Format rules (the task models are trained on exactly this): plain ASCII, one line, the task's
name and a colon first, symbols separated by single spaces, the prompt ends with the separator
``" ="`` and the answer starts with one space (so ``prompt + answer`` reads naturally; token
counts under the shipped tokenizer are in ``docs/tasks.md``). A model ends its answer with a
newline or ``<|endoftext|>`` (:func:`harness.tasks.scoring.predict_answer`).

Determinism: example ``i`` of ``generate(task, level, n, seed)`` is drawn from its own
SplitMix64 stream keyed by ``(task, level, seed, i)`` (:class:`SeqRandom`, written out here so
that no Python or numpy release can change the examples), so it is the same whatever ``n`` is,
and ``generate(..., n)[:k] == generate(..., k)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dlmcore.errors import UserError, short_repr
from dlmcore.registry import Registry

SEPARATOR = " ="
"""Every prompt ends with this; the answer follows it."""

MAX_EXAMPLES = 1_000_000
"""The most examples one :func:`generate` call makes."""


class TaskError(UserError, ValueError):
    """A task cannot be generated as asked (unknown level, bad count or seed)."""


@dataclass(frozen=True)
class Example:
    """One prompted example.

    Attributes:
        task: the task name (a built-in task, ``jsonl:<stem>`` or ``lmeval:<name>``).
        level: difficulty level (built-in: 1, 2, 3; files: 0 unless the line gives one).
        prompt: the text the model is conditioned on; built-in prompts end with ``" ="``.
        answer: the reference; the prediction must equal it after the task's normalisation.
        id: unique within a suite, e.g. ``add-L2-s0-17``.
    """

    task: str
    level: int
    prompt: str
    answer: str
    id: str


# --------------------------------------------------------------------------------------------
# A fully specified random stream
# --------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


class SeqRandom:
    """SplitMix64 (Steele, Lea & Flood 2014) seeded from SHA-256 of a text key.

    Args:
        key: any text; equal keys give equal streams on every platform and Python version.
    """

    def __init__(self, key: str) -> None:
        self.state = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")

    def next64(self) -> int:
        """The next 64-bit output."""
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """A uniform integer in [0, n) (rejection sampling: no modulo bias)."""
        limit = (1 << 64) - (1 << 64) % n
        while True:
            x = self.next64()
            if x < limit:
                return x % n

    def choice(self, items: Sequence[Any]) -> Any:
        """A uniform element of ``items``."""
        return items[self.below(len(items))]

    def digits(self, k: int) -> list[str]:
        """``k`` uniform decimal digits."""
        return [str(self.below(10)) for _ in range(k)]

    def sample(self, items: Sequence[Any], k: int) -> list[Any]:
        """``k`` distinct elements of ``items`` in random order (partial Fisher-Yates)."""
        pool = list(items)
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


# --------------------------------------------------------------------------------------------
# Task specs and the registry
# --------------------------------------------------------------------------------------------

Maker = Callable[[SeqRandom, Any], tuple[str, str]]
"""(stream, level size) → (prompt, answer)."""


@dataclass(frozen=True)
class TaskSpec:
    """A task: how to generate it, at which levels, and how its answers are compared.

    Attributes:
        name: the registry name (also the prompt's first word for built-in tasks).
        description: one line for ``docs`` and listings.
        sizes: the size parameter of each level (level ``i`` uses ``sizes[i - 1]``); empty
            for file and lm-eval tasks, which have no generator.
        normalisation: the scoring normalisation (:data:`harness.tasks.scoring.NORMALISATIONS`).
        make: the generator, ``make(stream, size) -> (prompt, answer)``; None for file tasks.
        answer_chars: the longest answer (characters) at a size; None: unknown.
        verify: for tasks with many right answers, ``verify(prompt, normalised prediction)``
            decides (the reference is one right answer, the training target); None: exact
            match with the reference.
        default: part of "every task" (``names`` None); ``shuffle`` is not, so that configs
            written before it existed keep their meaning.
    """

    name: str
    description: str
    sizes: tuple[Any, ...] = ()
    normalisation: str = "whitespace"
    make: Maker | None = None
    answer_chars: Callable[[Any], int] | None = None
    verify: Callable[[str, str], bool] | None = None
    default: bool = True

    @property
    def levels(self) -> tuple[int, ...]:
        """The difficulty levels, 1 … len(sizes)."""
        return tuple(range(1, len(self.sizes) + 1))

    def size(self, level: int) -> Any:
        """The size parameter of ``level``.

        Raises:
            TaskError: the task has no such level.
        """
        if isinstance(level, bool) or level not in self.levels:
            raise TaskError(
                f"task '{self.name}' has no level {short_repr(level)}; it has levels "
                f"{list(self.levels) or 'none (a file or lm-eval task)'}. Pick one of them."
            )
        return self.sizes[level - 1]

    def max_answer_chars(self, level: int) -> int:
        """An upper bound on the answer's length in characters at ``level``.

        A budget hint: the generation length should hold this many characters' tokens plus an
        end marker. File and lm-eval tasks (no levels) give their longest answer at any level.
        """
        if self.answer_chars is None:
            raise TaskError(f"task '{self.name}' has no answer-length bound.")
        return int(self.answer_chars(self.size(level) if self.sizes else None))


TASKS: Registry[TaskSpec] = Registry("task")
"""Built-in tasks by name."""

USER_TASKS: dict[str, TaskSpec] = {}
"""Specs of tasks loaded in this process from files and lm-eval (``jsonl:…``, ``lmeval:…``)."""

FILE_PREFIXES = {"jsonl:": "whitespace", "lmeval:": "strip"}
"""Name prefixes of non-built-in tasks and their default normalisation when not loaded here."""


def register_user_task(spec: TaskSpec) -> TaskSpec:
    """Make ``spec`` (a file or lm-eval task) known to :func:`task_spec`; a reload replaces it."""
    USER_TASKS[spec.name] = spec
    return spec


def task_spec(name: str) -> TaskSpec:
    """The spec of a task name: built-in, loaded in this process, or by its prefix.

    Raises:
        dlmcore.registry.RegistryError: unknown name (with did-you-mean over the built-ins).
    """
    if name in TASKS:
        return TASKS.get(name)
    if name in USER_TASKS:
        return USER_TASKS[name]
    for prefix, norm in FILE_PREFIXES.items():
        if isinstance(name, str) and name.startswith(prefix):
            return TaskSpec(name, f"{prefix[:-1]} task", normalisation=norm)
    return TASKS.get(name)  # raises with did-you-mean


def _spaced(symbols: Iterable[str]) -> str:
    return " ".join(symbols)


def _task(
    name: str,
    description: str,
    sizes: tuple[Any, ...],
    chars: Callable[[Any], int],
    verify: Callable[[str, str], bool] | None = None,
    default: bool = True,
):
    """Decorator: register a generator ``make(stream, size)`` as a built-in task."""

    def wrap(make: Maker) -> Maker:
        spec = TaskSpec(name, description, sizes, "whitespace", make, chars, verify, default)
        TASKS.add(name, spec)
        return make

    return wrap


# --------------------------------------------------------------------------------------------
# The generators (one per task; the prompt's keyword is the task's name)
# --------------------------------------------------------------------------------------------


@_task("copy", "repeat a digit string", (4, 8, 16), lambda n: 2 * n)
def make_copy(rng: SeqRandom, n: int) -> tuple[str, str]:
    """``copy: d1 … dn =`` → `` d1 … dn``."""
    d = rng.digits(n)
    return f"copy: {_spaced(d)}{SEPARATOR}", " " + _spaced(d)


@_task("reverse", "a digit string backwards", (4, 8, 16), lambda n: 2 * n)
def make_reverse(rng: SeqRandom, n: int) -> tuple[str, str]:
    """``reverse: d1 … dn =`` → `` dn … d1``."""
    d = rng.digits(n)
    return f"reverse: {_spaced(d)}{SEPARATOR}", " " + _spaced(d[::-1])


@_task("sort", "digits in ascending order", (4, 8, 16), lambda n: 2 * n)
def make_sort(rng: SeqRandom, n: int) -> tuple[str, str]:
    """``sort: d1 … dn =`` → the digits ascending (a counting sort, not ``sorted``)."""
    d = rng.digits(n)
    counts = [0] * 10
    for x in d:
        counts[int(x)] += 1
    out = [str(v) for v in range(10) for _ in range(counts[v])]
    return f"sort: {_spaced(d)}{SEPARATOR}", " " + _spaced(out)


def _column_sum(a: list[str], b: list[str]) -> list[str]:
    """Schoolbook addition of two equal-length digit lists, right to left with a carry."""
    out, carry = [], 0
    for x, y in zip(reversed(a), reversed(b)):
        s = int(x) + int(y) + carry
        out.append(str(s % 10))
        carry = s // 10
    if carry:
        out.append(str(carry))
    return out[::-1]


@_task("add", "the sum of two n-digit numbers", (2, 4, 8), lambda n: 2 * (n + 1))
def make_add(rng: SeqRandom, n: int) -> tuple[str, str]:
    """``add: a1 … an + b1 … bn =`` → the sum's digits (no leading zeros; n or n + 1)."""
    a = [str(1 + rng.below(9)), *rng.digits(n - 1)]
    b = [str(1 + rng.below(9)), *rng.digits(n - 1)]
    return f"add: {_spaced(a)} + {_spaced(b)}{SEPARATOR}", " " + _spaced(_column_sum(a, b))


KV_KEYS = "abcdefghijklmnopqrstuvwxyz"


@_task("kv", "look up the value of a key", ((4, 1), (8, 2), (16, 3)), lambda s: 2 * s[1])
def make_kv(rng: SeqRandom, size: tuple[int, int]) -> tuple[str, str]:
    """``kv: a=3 8 b=7 0 ; b =`` → `` 7 0`` (pairs × value digits per level)."""
    pairs, width = size
    keys = rng.sample(KV_KEYS, pairs)
    values = [rng.digits(width) for _ in keys]
    q = rng.below(pairs)
    body = " ".join(f"{k}={_spaced(v)}" for k, v in zip(keys, values))
    return f"kv: {body} ; {keys[q]}{SEPARATOR}", " " + _spaced(values[q])


BRACKETS = {"(": ")", "[": "]", "{": "}"}
MAX_WALKS = 10_000


@_task("brackets", "close every open bracket", (4, 8, 16), lambda n: 2 * n)
def make_brackets(rng: SeqRandom, n: int) -> tuple[str, str]:
    """A random prefix with at least one bracket left open → its closers, innermost first.

    The prefix has n − 1 or n brackets, so the answer's length takes either parity.
    """
    opens = list(BRACKETS)
    for _ in range(MAX_WALKS):  # a walk that closes everything is drawn again
        prefix: list[str] = []
        stack: list[str] = []
        for _ in range(n - rng.below(2)):
            if stack and rng.below(2):
                prefix.append(BRACKETS[stack.pop()])
            else:
                stack.append(rng.choice(opens))
                prefix.append(stack[-1])
        if stack:
            closers = [BRACKETS[o] for o in reversed(stack)]
            return f"brackets: {_spaced(prefix)}{SEPARATOR}", " " + _spaced(closers)
    raise RuntimeError(f"no open bracket left after {MAX_WALKS} walks of {n}")  # unreachable


DETERMINERS = ("the", "that", "this", "one", "every")
ADJECTIVES = (
    "old", "young", "tall", "quiet", "dark", "bright", "small", "great", "cold", "kind",
    "proud", "weary", "silent", "gentle", "strange", "little",
)  # fmt: skip
NOUNS = (
    "man", "woman", "child", "dog", "horse", "king", "sailor", "farmer", "captain", "doctor",
    "stranger", "soldier", "merchant", "traveller", "shepherd", "widow",
)  # fmt: skip
VERBS = (
    "walked", "ran", "rode", "sailed", "hurried", "wandered", "crept", "turned", "looked",
    "came", "returned", "stumbled",
)  # fmt: skip
PREPOSITIONS = (
    "to", "from", "toward", "across", "past", "into", "through", "beyond", "along", "near",
)  # fmt: skip
PLACES = (
    "river", "house", "garden", "forest", "village", "harbour", "mountain", "church", "castle",
    "meadow", "road", "bridge", "market", "valley", "cottage", "lighthouse",
)  # fmt: skip
WORD_LISTS = (DETERMINERS, ADJECTIVES, NOUNS, VERBS, PREPOSITIONS, DETERMINERS, ADJECTIVES, PLACES)
"""One clause: determiner adjective noun verb preposition determiner adjective place."""
_LONGEST_WORD = max(len(w) for words in WORD_LISTS for w in words)


def _clause(rng: SeqRandom, n_words: int) -> list[str]:
    return [rng.choice(words) for words in WORD_LISTS[:n_words]]


@_task("phrase", "repeat a short English sentence", (4, 8, 17), lambda n: n * (_LONGEST_WORD + 1))
def make_phrase(rng: SeqRandom, n_words: int) -> tuple[str, str]:
    """``phrase: the old man walked =`` → `` the old man walked`` (4, 8 or 8 + and + 8 words)."""
    words = _clause(rng, 8) + ["and"] + _clause(rng, 8) if n_words == 17 else _clause(rng, n_words)
    return f"phrase: {_spaced(words)}{SEPARATOR}", " " + _spaced(words)


def is_permutation_of_prompt(prompt: str, prediction: str) -> bool:
    """``shuffle``'s scorer: the prediction's symbols are the prompt's, each exactly once.

    Args:
        prompt: ``shuffle: d1 … dn =``.
        prediction: the normalised answer (symbols separated by single spaces).
    """
    given = prompt.removeprefix("shuffle:").removesuffix(SEPARATOR).split()
    return sorted(prediction.split()) == sorted(given)


@_task(
    "shuffle",
    "any reordering of n distinct digits (many right answers)",
    (4, 8, 10),
    lambda n: 2 * n,
    verify=is_permutation_of_prompt,
    default=False,
)
def make_shuffle(rng: SeqRandom, n: int) -> tuple[str, str]:
    """``shuffle: 3 9 1 4 =`` → any permutation of the digits, e.g. `` 4 1 3 9``.

    The n digits are distinct, and the reference (the training target) is a uniformly random
    permutation of them, so a model learns "a digit not used yet" at every position. Decoded
    one token per call that is easy; decoded in parallel, positions drawn from the same marginal
    collide and the answer repeats a digit (ParallelBench's shuffle; Kim et al. 2025,
    arXiv 2510.04767). Scored by :func:`is_permutation_of_prompt`, not by the reference.
    """
    digits = rng.sample([str(d) for d in range(10)], n)
    answer = rng.sample(digits, n)
    return f"shuffle: {_spaced(digits)}{SEPARATOR}", " " + _spaced(answer)


# --------------------------------------------------------------------------------------------
# Generating examples
# --------------------------------------------------------------------------------------------


def _check_count(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TaskError(f"{name} must be an integer in [{lo}, {hi}]; got {short_repr(value)}.")
    return value


def generate(task: str, level: int, n: int, seed: int) -> list[Example]:
    """``n`` examples of a built-in task at ``level``, deterministic in ``seed``.

    Raises:
        dlmcore.registry.RegistryError: unknown task (did-you-mean).
        TaskError: no such level, or ``n`` / ``seed`` out of range.
    """
    spec = TASKS.get(task)
    size = spec.size(level)
    _check_count("n (examples)", n, 0, MAX_EXAMPLES)
    _check_count("seed", seed, 0, 2**63 - 1)
    assert spec.make is not None  # every registered built-in has a generator
    out = []
    for i in range(n):
        prompt, answer = spec.make(SeqRandom(f"dlmbench-tasks/{task}/{level}/{seed}/{i}"), size)
        out.append(Example(task, level, prompt, answer, f"{task}-L{level}-s{seed}-{i}"))
    return out


def default_tasks() -> list[str]:
    """The built-in tasks that "every task" means (``TaskSpec.default``)."""
    return [n for n in TASKS.names() if TASKS.get(n).default]


def suite(
    names: Sequence[str] | None = None,
    levels: Iterable[int] | None = None,
    n_per: int = 32,
    seed: int = 0,
) -> list[Example]:
    """``n_per`` examples of every task × level, task by task in the order given.

    ``names`` None: every default built-in task (all but ``shuffle``, which must be named);
    ``levels`` None: every level of each task.

    Raises:
        dlmcore.registry.RegistryError, TaskError: as :func:`generate`.
    """
    out: list[Example] = []
    for name in default_tasks() if names is None else list(names):
        spec = TASKS.get(name)
        for level in spec.levels if levels is None else list(levels):
            out += generate(name, level, n_per, seed)
    return out
