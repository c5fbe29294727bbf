"""Task rows: layout, seq_len check, held-out split, the task/corpus mixture.

The stand-in suite (``fake_tasks.fake_suite``) is injected; the shipped tokenizer encodes. The
last tests read the real ``harness.tasks.suite`` to check that the configured levels fit L = 64.
"""

from __future__ import annotations

import numpy as np
import pytest

from dlmcore.configio import ConfigError
from harness.train.taskdata import (
    encode_tasks,
    mixed_batches,
    split_examples,
    task_rows_per_batch,
)
from harness.train.tokenizer import TextTokenizer
from tests.harness.train.fake_tasks import FakeExample, fake_suite


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.from_file()


def test_row_layout_is_bos_prompt_answer_then_eos_padding(tok):
    ex = [
        FakeExample("echo", 1, "echo: 4 2 =", " 4 2", "a"),
        FakeExample("twice", 2, "twice: 1 2 3 4 =", " 1 2 3 4 1 2 3 4", "b"),
    ]
    enc = encode_tasks(ex, tok, 24)
    assert enc.rows.shape == (2, 24) and enc.rows.dtype == np.int64
    for r, e in enumerate(ex):
        p, a = tok.encode(e.prompt), tok.encode(e.answer)
        want = [tok.bos_id, *p, *a] + [tok.eos_id] * (24 - 1 - len(p) - len(a))
        assert enc.rows[r].tolist() == want
        assert enc.prompt_len[r] == 1 + len(p) and enc.answer_len[r] == len(a)
        # The answer decodes back to the reference text, character for character.
        P = enc.prompt_len[r]
        assert tok.decode(enc.rows[r, P : P + enc.answer_len[r]]) == e.answer
    assert enc.examples == tuple(ex)


def test_a_row_that_does_not_fit_is_one_clear_error(tok):
    long = FakeExample("twice", 3, "twice: 1 2 3 4 5 6 =", " 1 2 3 4 5 6 1 2 3 4 5 6", "long-one")
    ex = [FakeExample("echo", 1, "echo: 4 2 =", " 4 2", "a"), long]
    need = 2 + len(tok.encode(ex[1].prompt)) + len(tok.encode(ex[1].answer))
    encode_tasks(ex, tok, need)  # exactly enough: one EOS after the answer
    with pytest.raises(ConfigError) as e:
        encode_tasks(ex, tok, need - 1)
    msg = str(e.value)
    assert f"'seq_len' is {need - 1}" in msg and f"needs {need} positions" in msg
    assert "'twice'" in msg and "long-one" in msg and f"at least {need}" in msg
    assert "task_levels" in msg and len(e.value.problems) == 1


def test_held_out_examples_never_reach_the_training_pool():
    # val_seed == seed: the pool holds every validation example, which must all be removed.
    train, val = split_examples(fake_suite, None, None, 40, 5, seed=3, val_seed=3)
    pool = fake_suite(None, None, 40, 3)
    held = {(e.task, e.level, e.prompt) for e in val}
    assert len(val) == 2 * 2 * 5 and set(val) <= set(pool)
    assert train == [e for e in pool if (e.task, e.level, e.prompt) not in held]
    assert len(train) <= len(pool) - len(val)
    # Different seeds: ids differ anyway; identical prompts (repeated problems) must go too.
    train, val = split_examples(fake_suite, ["echo"], [1], 300, 20, seed=0, val_seed=1)
    val_ids, val_prompts = {e.id for e in val}, {e.prompt for e in val}
    pool = fake_suite(["echo"], [1], 300, 0)
    dropped = [e for e in pool if e.prompt in val_prompts]
    assert dropped  # 2-digit echo has 100 problems: 300 draws repeat some of the 20 held out
    assert not {e.id for e in train} & val_ids
    assert not {e.prompt for e in train} & val_prompts
    assert len(train) == len(pool) - len(dropped)
    assert {(e.task, e.level) for e in val} == {("echo", 1)} and len(val) == 20


def test_a_level_with_too_few_problems_is_a_clear_error():
    with pytest.raises(ConfigError) as e:  # 'tiny' has 2 problems; 10 held out covers both
        split_examples(fake_suite, ["tiny", "echo"], [1], 20, 10, seed=0, val_seed=1)
    assert "'tiny' level '1'" in str(e.value) and "task_val_per" in str(e.value)
    assert "echo" not in str(e.value)


def test_mixture_counts_rows_shuffles_them_and_walks_epochs():
    L, n_t, b, k = 6, 12, 8, 6
    task = np.arange(n_t)[:, None] * np.ones(L, dtype=np.int64) + 1000  # row i = 1000 + i
    plen = np.arange(n_t) % 3 + 2
    corpus = np.arange(50)[:, None] * np.ones(L, dtype=np.int64)  # row j = j
    it = mixed_batches(task, plen, corpus, b, k, seed=5)
    first_rows, seen = [], []
    for _ in range(4):
        rows, p = next(it)
        assert rows.shape == (b, L) and p.shape == (b,)
        is_task = rows[:, 0] >= 1000
        assert is_task.sum() == k
        assert (p[~is_task] == 0).all()
        assert (p[is_task] == plen[rows[is_task, 0] - 1000]).all()  # prompt lengths follow rows
        first_rows.append(tuple(np.flatnonzero(is_task)))
        seen += (rows[is_task, 0] - 1000).tolist()
    assert len(set(first_rows)) > 1  # task rows are not pinned to fixed slots (antithetic t)
    assert sorted(seen[:n_t]) == list(range(n_t))  # one epoch: every task row exactly once
    again = mixed_batches(task, plen, corpus, b, k, seed=5)
    it = mixed_batches(task, plen, corpus, b, k, seed=5)
    for _ in range(3):  # deterministic in the seed
        (r1, p1), (r2, p2) = next(it), next(again)
        assert np.array_equal(r1, r2) and np.array_equal(p1, p2)


def test_all_task_batches_need_no_corpus_and_bad_counts_are_refused():
    task, plen = np.ones((4, 5), dtype=np.int64), np.full(4, 2)
    rows, p = next(mixed_batches(task, plen, None, 4, 4, seed=0))
    assert (p == 2).all()
    with pytest.raises(ValueError, match="corpus"):
        next(mixed_batches(task, plen, None, 4, 3, seed=0))
    with pytest.raises(ValueError, match="n_task"):
        next(mixed_batches(task, plen, None, 4, 5, seed=0))
    assert task_rows_per_batch(16, 0.75) == 12 and task_rows_per_batch(16, 0.5) == 8


# ---------------------------------------------------------------------------------------------
# The real suite at the configured levels
# ---------------------------------------------------------------------------------------------


def test_real_suite_levels_1_and_2_fit_64_positions_and_level_3_does_not(tok):
    from harness.tasks.suite import suite

    enc = encode_tasks(suite(levels=[1, 2], n_per=50, seed=0), tok, 64)
    assert enc.prompt_len.min() >= 2 and (enc.rows[:, 0] == tok.bos_id).all()
    with pytest.raises(ConfigError, match="'kv' level 3"):
        encode_tasks(suite(["kv"], [3], n_per=5, seed=0), tok, 64)
