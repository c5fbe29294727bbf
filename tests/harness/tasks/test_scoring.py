"""Answer extraction, normalisations and exact match on hand-made cases; the accuracy CI
against the exact limit of the percentile bootstrap (binomial quantiles) and an index-resampling
bootstrap written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dlmcore.errors import UserError
from dlmcore.registry import RegistryError
from harness.tasks import scoring
from harness.tasks.scoring import accuracy_ci, normalise, predict_answer, score
from harness.tasks.suite import TASKS, TaskSpec, generate

# --------------------------------------------------------------------------------------------
# predict_answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "generated,answer",
    [
        (" 3 9 1 4\ncopy: 1 2 =", " 3 9 1 4"),  # a newline ends the answer
        (" 7<|endoftext|><|endoftext|>", " 7"),  # so does EOS
        (" 1 2<|endoftext|>\n", " 1 2"),  # whichever comes first
        (" 1 2\n<|endoftext|>", " 1 2"),
        (" 5 5 5", " 5 5 5"),  # no marker: everything
        ("\n 3", ""),  # an immediate end: empty answer
        ("", ""),
    ],
)
def test_predict_answer_cuts_at_the_first_end_marker(generated, answer):
    assert predict_answer(generated) == answer


def test_predict_answer_with_a_task_s_own_stops():
    assert predict_answer("Paris.Question: next", stops=["Question:", "\n\n"]) == "Paris."
    assert predict_answer("4\n5", stops=["", "</s>"]) == "4\n5"  # empty stops are ignored


# --------------------------------------------------------------------------------------------
# normalisations and exact match
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,text,expected",
    [
        ("exact", " 3 9 ", " 3 9 "),
        ("strip", " \t3  9 \n", "3  9"),
        ("whitespace", " \t3  9 \n", "3 9"),
        ("whitespace", "a\t\tb", "a b"),
        ("casefold", " The  OLD Man", "the old man"),
        ("casefold", "Straße", "strasse"),
        ("numeric", " 1 3 9 9", "1399"),
        ("numeric", "1,399", "1399"),
        ("numeric", "+1399.00", "1399"),
        ("numeric", "-0", "0"),
        ("numeric", "0.50", "0.5"),
        ("numeric", ".5", "0.5"),
        ("numeric", "1e3", "1000"),
        ("numeric", "-12", "-12"),
        ("numeric", "12a", None),
        ("numeric", "", None),
        ("numeric", "nan", None),
        ("numeric", "1.2.3", None),
    ],
)
def test_normalisations_on_hand_made_text(name, text, expected):
    assert normalise(text, name) == expected


def test_unknown_normalisation_has_a_did_you_mean():
    with pytest.raises(RegistryError, match="Did you mean: numeric"):
        normalise("1", "numerik")


@pytest.mark.parametrize(
    "task,prediction,right",
    [
        ("copy", " 3 9 1 4", True),  # exactly the reference
        ("copy", "3 9 1 4", True),  # the leading space is whitespace
        ("copy", " 3  9 1 4 ", True),  # runs of spaces collapse
        ("copy", " 3 9 1 5", False),  # one digit wrong
        ("copy", " 3 9 1", False),  # one digit short
        ("copy", " 3 9 1 4 4", False),  # one digit long
        ("copy", " 3914", False),  # spacing inside the answer matters
        ("copy", "", False),
        ("kv", " 7", True),
        ("kv", " 7.", False),
    ],
)
def test_score_built_in_tasks(task, prediction, right):
    answer = {"copy": " 3 9 1 4", "kv": " 7"}[task]
    assert score(task, prediction, answer) is right


def test_score_generated_examples_end_to_end():
    """A generation that repeats the reference and stops is right; one token off is wrong."""
    for name in TASKS.names():
        ex = generate(name, 2, 1, seed=5)[0]
        kw = {"prompt": ex.prompt}
        assert score(ex.task, predict_answer(ex.answer + "\n" + ex.prompt), ex.answer, **kw)
        assert score(TASKS.get(name), predict_answer(ex.answer + "<|endoftext|>"), ex.answer, **kw)
        assert not score(ex.task, predict_answer(ex.answer[:-1] + "\n"), ex.answer, **kw)


@pytest.mark.parametrize(
    "prediction,right",
    [
        (" 4 1 9 3", True),  # another order than the reference: still right
        (" 3 9 1 4", True),  # the prompt's own order is a permutation too
        ("4  1 9 3 ", True),  # whitespace normalised first
        (" 4 4 9 3", False),  # a digit twice, one missing: what parallel decoding produces
        (" 4 1 9", False),  # one short
        (" 4 1 9 3 3", False),  # one extra
        (" 4 1 9 5", False),  # a digit not in the prompt
        (" 4193", False),  # not separated
    ],
)
def test_shuffle_is_scored_as_any_permutation_of_the_prompt(prediction, right):
    prompt = "shuffle: 3 9 1 4 ="
    assert score("shuffle", prediction, " 1 4 3 9", prompt=prompt) is right


def test_a_verified_task_without_its_prompt_is_a_scoring_error():
    with pytest.raises(scoring.ScoringError, match="pass prompt="):
        score("shuffle", " 1 2", " 2 1")


def test_score_by_spec_name_and_file_prefix():
    numeric = TaskSpec("my-sums", "sums", normalisation="numeric")
    assert score(numeric, "1,399", " 1 3 9 9")
    assert not score(numeric, "1,398", "1399")
    assert not score(numeric, "about 1399", "1399")  # not a number: never right
    assert score("jsonl:never-loaded", " a  b ", "a b")  # a file task: whitespace by default
    assert score("lmeval:never-loaded", " Paris ", "Paris")  # lm-eval: strip
    assert not score("lmeval:never-loaded", "paris", "Paris")


def test_a_reference_its_normalisation_cannot_read_is_a_task_error():
    numeric = TaskSpec("broken", "x", normalisation="numeric")
    with pytest.raises(scoring.ScoringError, match="reference answer 'seven' of task 'broken'"):
        score(numeric, "7", "seven")
    assert issubclass(scoring.ScoringError, UserError)


def test_an_unknown_task_name_has_a_did_you_mean():
    with pytest.raises(RegistryError, match="Did you mean: brackets"):
        score("braket", "x", "x")


# --------------------------------------------------------------------------------------------
# accuracy with a bootstrap CI
# --------------------------------------------------------------------------------------------


def test_degenerate_cases_by_hand():
    assert accuracy_ci([True] * 9) == (1.0, 1.0, 1.0)
    assert accuracy_ci([False] * 9) == (0.0, 0.0, 0.0)
    acc, lo, hi = accuracy_ci([])
    assert math.isnan(acc) and math.isnan(lo) and math.isnan(hi)
    assert accuracy_ci([True, False, True, True])[0] == 0.75


def test_reproducible_per_seed():
    x = [True] * 30 + [False] * 20
    assert accuracy_ci(x, seed=3) == accuracy_ci(x, seed=3)
    acc, lo, hi = accuracy_ci(x, seed=3)
    assert lo < acc < hi
    draws = {accuracy_ci(x, seed=s)[1] for s in range(20)}
    assert len(draws) > 1  # the seed is what fixes the interval


@pytest.mark.parametrize("n,k", [(50, 30), (40, 4), (200, 150)])
def test_ci_equals_the_exact_percentile_bootstrap_limit(n, k):
    """With many resamples the percentile interval converges to the binomial quantiles."""
    x = [True] * k + [False] * (n - k)
    acc, lo, hi = accuracy_ci(x, n_boot=40_000, seed=1)
    exact_lo = stats.binom.ppf(0.025, n, k / n) / n
    exact_hi = stats.binom.ppf(0.975, n, k / n) / n
    assert acc == k / n
    assert abs(lo - exact_lo) <= 1 / n + 1e-12
    assert abs(hi - exact_hi) <= 1 / n + 1e-12


def test_ci_agrees_with_an_index_resampling_bootstrap():
    """The textbook bootstrap (resample indices, take means) written out here, other draws."""
    rng = np.random.default_rng(123)
    x = rng.random(80) < 0.35
    means = x[rng.integers(0, x.size, size=(40_000, x.size))].mean(axis=1)
    want_lo, want_hi = np.quantile(means, [0.025, 0.975])
    _, lo, hi = accuracy_ci(list(x), n_boot=40_000, seed=9)
    assert abs(lo - want_lo) <= 1 / 80 and abs(hi - want_hi) <= 1 / 80
    _, lo90, hi90 = accuracy_ci(list(x), n_boot=40_000, seed=9, level=0.9)
    assert lo <= lo90 and hi90 <= hi  # a 90 % interval sits inside the 95 % one


@pytest.mark.parametrize("kwargs", [{"n_boot": 0}, {"n_boot": 2.5}, {"level": 95}, {"level": 0}])
def test_bad_ci_arguments_are_named(kwargs):
    with pytest.raises(scoring.ScoringError, match=next(iter(kwargs))):
        accuracy_ci([True, False], **kwargs)
