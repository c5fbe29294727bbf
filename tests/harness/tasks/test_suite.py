"""The built-in task suite: deterministic per seed, references checked by independent code.

Oracles: Python's ``sorted`` / ``int`` arithmetic / a dict parsed back from the prompt / a
pair-removal balance check (not the generator's stack) / the published SplitMix64 output for
state 0; and pinned examples, so that the stream the task models are trained on never moves.
"""

from __future__ import annotations

import collections
import re

import pytest

from dlmcore.errors import UserError
from dlmcore.registry import RegistryError
from harness.tasks import suite
from harness.tasks.suite import TASKS, Example, SeqRandom, TaskError, generate

ALL = [(name, level) for name in TASKS.names() for level in TASKS.get(name).levels]
N = 40


def body(ex: Example) -> list[str]:
    """The prompt's symbols between ``<task>:`` and the final `` =``."""
    head = f"{ex.task}: "
    assert ex.prompt.startswith(head) and ex.prompt.endswith(" =")
    return ex.prompt[len(head) : -2].split(" ")


SEVEN = ["add", "brackets", "copy", "kv", "phrase", "reverse", "sort"]


def test_the_suite_has_eight_tasks_at_three_levels_and_seven_by_default():
    assert TASKS.names() == sorted([*SEVEN, "shuffle"])
    assert all(TASKS.get(n).levels == (1, 2, 3) for n in TASKS.names())
    assert suite.default_tasks() == SEVEN  # shuffle must be named: old configs keep their data


@pytest.mark.parametrize("name,level", ALL)
def test_format_rules_and_the_answer_budget(name, level):
    spec = TASKS.get(name)
    for ex in generate(name, level, N, seed=3):
        text = ex.prompt + ex.answer
        assert text.isascii() and "\n" not in text and "<|" not in text
        assert ex.prompt.endswith(" =") and ex.answer.startswith(" ")
        assert "  " not in text and not ex.answer.endswith(" ")
        assert len(ex.answer) <= spec.max_answer_chars(level)
        assert (ex.task, ex.level) == (name, level)


def check_copy(ex: Example, n: int) -> None:
    d = body(ex)
    assert len(d) == n and all(x in "0123456789" and len(x) == 1 for x in d)
    assert ex.answer.split() == d


def check_reverse(ex: Example, n: int) -> None:
    d = body(ex)
    assert len(d) == n and ex.answer.split() == d[::-1]


def check_sort(ex: Example, n: int) -> None:
    d = body(ex)
    assert len(d) == n and ex.answer.split() == sorted(d)  # Python's sort as the oracle


def check_add(ex: Example, n: int) -> None:
    a, b = " ".join(body(ex)).split(" + ")
    a, b = a.replace(" ", ""), b.replace(" ", "")
    assert len(a) == len(b) == n and a[0] != "0" and b[0] != "0"
    assert ex.answer.split() == list(str(int(a) + int(b)))  # Python's integers as the oracle


def check_kv(ex: Example, size: tuple[int, int]) -> None:
    pairs, width = size
    text = " ".join(body(ex))
    table_text, query = text.split(" ; ")
    table = {k: v.split() for k, v in re.findall(r"([a-z])=([0-9](?: [0-9])*)", table_text)}
    assert len(table) == pairs and all(len(v) == width for v in table.values())
    assert ex.answer.split() == table[query]


def balanced(text: str) -> bool:
    """Remove adjacent matching pairs until none is left (no stack, unlike the generator)."""
    while any(p in text for p in ("()", "[]", "{}")):
        for p in ("()", "[]", "{}"):
            text = text.replace(p, "")
    return text == ""


def check_brackets(ex: Example, n: int) -> None:
    prefix = "".join(body(ex))
    answer = ex.answer.replace(" ", "")
    assert len(prefix) in (n - 1, n) and set(prefix) <= set("()[]{}") and set(answer) <= set(")]}")
    assert answer and balanced(prefix + answer)
    # minimal: the prefix reduces to openers only, one closer per opener
    rest = prefix
    while any(p in rest for p in ("()", "[]", "{}")):
        for p in ("()", "[]", "{}"):
            rest = rest.replace(p, "")
    assert set(rest) <= set("([{") and len(answer) == len(rest)


def check_shuffle(ex: Example, n: int) -> None:
    d = body(ex)
    assert len(d) == n == len(set(d)) and all(x in "0123456789" and len(x) == 1 for x in d)
    assert collections.Counter(ex.answer.split()) == collections.Counter(d)  # a permutation


def check_phrase(ex: Example, n_words: int) -> None:
    words = body(ex)
    assert len(words) == n_words and ex.answer.split() == words
    vocab = {w for ws in suite.WORD_LISTS for w in ws} | {"and"}
    assert set(words) <= vocab


CHECKS = {
    "copy": check_copy, "reverse": check_reverse, "sort": check_sort, "add": check_add,
    "kv": check_kv, "brackets": check_brackets, "phrase": check_phrase, "shuffle": check_shuffle,
}  # fmt: skip


@pytest.mark.parametrize("name,level", ALL)
@pytest.mark.parametrize("seed", [0, 1])
def test_references_pass_an_independent_check(name, level, seed):
    size = TASKS.get(name).size(level)
    for ex in generate(name, level, N, seed):
        CHECKS[name](ex, size)


def test_the_checks_catch_a_wrong_reference():
    """The oracles can fail: a corrupted answer is rejected by each of them."""
    for name, check in CHECKS.items():
        ex = generate(name, 2, 1, 0)[0]
        wrong = Example(ex.task, ex.level, ex.prompt, ex.answer + " 9", ex.id)
        with pytest.raises(AssertionError):
            check(wrong, TASKS.get(name).size(2))


def test_an_add_with_a_carry_out_and_every_level_is_exercised():
    sums = [ex.answer.split() for ex in generate("add", 1, 200, 0)]
    assert any(len(s) == 3 for s in sums) and any(len(s) == 2 for s in sums)
    depths = {len(ex.answer.split()) for ex in generate("brackets", 3, 200, 0)}
    assert min(depths) == 1 and max(depths) >= 4


@pytest.mark.parametrize("name,level", ALL)
def test_deterministic_per_seed_and_a_prefix_of_a_longer_draw(name, level):
    a = generate(name, level, 20, seed=7)
    assert a == generate(name, level, 20, seed=7)
    assert generate(name, level, 5, seed=7) == a[:5]
    assert [e.prompt for e in generate(name, level, 20, seed=8)] != [e.prompt for e in a]
    assert len({e.id for e in a}) == 20


def test_pinned_examples_never_change():
    """The task models are trained on this stream: a change to it must be deliberate."""
    assert [(e.prompt, e.answer) for e in generate("copy", 1, 2, 0)] == [
        ("copy: 3 5 0 0 =", " 3 5 0 0"),
        ("copy: 4 0 8 5 =", " 4 0 8 5"),
    ]
    assert generate("add", 1, 2, 0)[1].prompt == "add: 9 5 + 7 6 ="
    assert generate("kv", 1, 1, 0)[0].prompt == "kv: w=3 z=6 t=1 x=1 ; t ="
    assert generate("brackets", 2, 1, 0)[0].prompt == "brackets: [ ] ( ) { } ( ="
    assert generate("phrase", 1, 1, 0)[0].answer == " this cold widow walked"
    assert generate("sort", 1, 1, 0)[0].id == "sort-L1-s0-0"


def test_splitmix64_matches_its_published_output():
    r = SeqRandom("any")
    r.state = 0
    assert r.next64() == 0xE220A8397B1DCDAF  # SplitMix64, state 0: the reference output
    assert r.next64() == 0x6E789E6AA1B965F4
    r = SeqRandom("k")
    draws = [r.below(3) for _ in range(3000)]
    assert set(draws) == {0, 1, 2} and all(800 < draws.count(v) < 1200 for v in range(3))
    assert sorted(SeqRandom("k").sample("abcdef", 6)) == list("abcdef")


def test_suite_concatenates_tasks_and_levels():
    exs = suite.suite(["sort", "add"], levels=[1, 3], n_per=3, seed=0)
    heads = [(e.task, e.level) for e in exs][::3]
    assert heads == [("sort", 1), ("sort", 3), ("add", 1), ("add", 3)]
    assert exs[:3] == generate("sort", 1, 3, 0)
    everything = suite.suite(n_per=2)
    assert len(everything) == 7 * 3 * 2 and len({e.id for e in everything}) == 42


def test_shuffle_references_are_uniform_permutations_not_the_prompt_order():
    """The training targets spread over the orders: each digit of the prompt lands in each
    answer position about equally often (so a model learns "any unused digit")."""
    exs = generate("shuffle", 1, 4000, seed=0)
    first = collections.Counter(body(ex).index(ex.answer.split()[0]) for ex in exs)
    assert set(first) == {0, 1, 2, 3} and all(850 < c < 1150 for c in first.values())
    assert sum(ex.answer.split() == body(ex) for ex in exs) < 4000 / 24 * 1.5


def test_bad_requests_are_user_errors_naming_the_value():
    with pytest.raises(RegistryError, match="Did you mean: reverse"):
        generate("revrse", 1, 3, 0)
    with pytest.raises(TaskError, match=r"no level 4; it has levels \[1, 2, 3\]"):
        generate("copy", 4, 3, 0)
    with pytest.raises(TaskError, match=r"n \(examples\) must be an integer in \[0, 1000000\]"):
        generate("copy", 1, -1, 0)
    with pytest.raises(TaskError, match="seed .* got True"):
        generate("copy", 1, 1, True)
    with pytest.raises(TaskError, match="level"):
        suite.suite(["copy"], levels=[0])
    assert issubclass(TaskError, UserError)
    assert generate("copy", 1, 0, 0) == []


def test_the_task_layer_imports_no_torch():
    """Task generation, scoring, files, AUP and the bridge run where torch is not installed."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import harness.tasks.suite, harness.tasks.scoring, harness.tasks.files\n"
        "import harness.tasks.aup, harness.tasks.lmeval\n"
        "print(','.join(m for m in ('torch', 'pandas', 'lm_eval') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
