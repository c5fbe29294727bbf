"""Corpus, split, tokenizer and training rows (harness/train/corpus.py, tokenizer.py)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.train.corpus import (
    DEFAULT_CORPUS,
    Document,
    is_validation,
    iterate_batches,
    load_documents,
    make_rows,
    split_documents,
)
from harness.train.tokenizer import DEFAULT_TOKENIZER, TextTokenizer


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return load_documents()


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.from_file()


def test_corpus_ships_and_split_is_deterministic_disjoint_and_about_two_percent(docs):
    assert DEFAULT_CORPUS.is_file()
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids)) > 4000
    assert {d.source for d in docs} == {"gutenberg", "sotu", "brown", "shakespeare"}
    train, val = split_documents(docs, "train"), split_documents(docs, "validation")
    assert {d.id for d in train}.isdisjoint({d.id for d in val})
    assert len(train) + len(val) == len(docs)
    # Binomial(n, 0.02): 5σ band, p_fail < 1e-6 for a fresh hash; the rule is fixed anyway.
    n = len(docs)
    assert abs(len(val) - 0.02 * n) < 5 * (0.02 * 0.98 * n) ** 0.5
    assert [d.id for d in split_documents(docs, "validation")] == [d.id for d in val]
    assert all(is_validation(d.id) for d in val)
    assert {d.source for d in val} == {"gutenberg", "sotu", "brown", "shakespeare"}
    with pytest.raises(ValueError, match="allowed: train, validation"):
        split_documents(docs, "test")


def test_documents_are_clean_text(docs):
    for d in docs[::50]:
        assert d.text.strip() == d.text and d.text
        assert "\t" not in d.text and "  " not in d.text and "\n\n\n" not in d.text
    brown = [d for d in docs if d.source == "brown"][:5]
    assert all("/at " not in d.text and "/nn " not in d.text for d in brown)  # POS tags stripped


def test_tokenizer_round_trips_and_ids_in_range(tok, docs):
    assert tok.vocab_size == 8192 and tok.model_vocab_size == 8193
    assert tok.bos_id == tok.eos_id == 0 and tok.mask_id == 8192
    texts = [d.text for d in docs[::400]] + ["Café — naïve “quotes”\n\nand   spaces", ""]
    for text in texts:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert tok.decode([0, *tok.encode("Hi"), tok.mask_id]) == "<|endoftext|>Hi[MASK]"
    assert tok.decode([0, *tok.encode("Hi"), 0], skip_special=True) == "Hi"
    with pytest.raises(ValueError, match="outside"):
        tok.decode([8193])


def test_tokenizer_loads_only_local_files(tmp_path):
    assert DEFAULT_TOKENIZER.is_file()
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        TextTokenizer.from_file(tmp_path / "missing.json")


def test_rows_prepend_bos_to_consecutive_chunks_of_l_minus_one():
    stream = np.arange(1, 24, dtype=np.uint16)  # 23 tokens, L − 1 = 5: 4 rows, tail of 3 dropped
    rows = make_rows(stream, 6, bos_id=0)
    assert rows.shape == (4, 6) and rows.dtype == np.int64
    assert (rows[:, 0] == 0).all()
    assert np.array_equal(rows[:, 1:].ravel(), np.arange(1, 21))
    with pytest.raises(ValueError, match="seq_len is 1"):
        make_rows(stream, 1, 0)


def test_batches_cover_each_epoch_once_and_are_deterministic():
    rows = np.arange(10)[:, None].repeat(3, 1)
    a = iterate_batches(rows, 3, seed=5)
    first_epoch = np.concatenate([next(a)[:, 0] for _ in range(3)])  # 9 of 10, no repeats
    assert len(set(first_epoch.tolist())) == 9
    b = iterate_batches(rows, 3, seed=5)
    assert np.array_equal(np.concatenate([next(b)[:, 0] for _ in range(3)]), first_epoch)
    with pytest.raises(ValueError, match="cannot fill"):
        next(iterate_batches(rows, 11, 0))
