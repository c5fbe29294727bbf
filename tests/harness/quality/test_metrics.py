"""Generative perplexity, the EOS rule, chunking and entropy against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.quality.metrics import (
    GenPPLProtocol,
    entropy_summary,
    generative_perplexity,
    score_token_rows,
    target_mask,
    unigram_entropy,
)

EOS = 0


class ToyEvaluator:
    """Characters are tokens ('.' is EOS); NLL of target token t is t / 10, so sums reveal which
    targets were counted."""

    name = "toy"
    revision = "0"
    eos_id = EOS

    def __init__(self, context: int = 64) -> None:
        self.context = context
        self.calls = []

    def encode(self, texts):
        return [[EOS if c == "." else ord(c) - ord("A") + 1 for c in t] for t in texts]

    def token_nll(self, ids, attention_mask):
        self.calls.append(ids.clone())
        return ids[:, 1:].double() / 10.0


def counted(rows, protocol, context=64):
    ev = ToyEvaluator(context)
    nll, n = score_token_rows(ev.encode(rows), ev, protocol)
    return nll, n


def test_worked_example_of_the_quality_protocol():
    """`A B <eos> C <eos> <pad>`: targets B, eos1, C, eos2, pad; valid B, eos1, C."""
    rows = ["AB.C.", "ABCDEF"]  # the second, longer row forces one padding EOS on the first
    nll, n = counted(rows, GenPPLProtocol())
    assert n[0] == 3
    assert nll[0] == pytest.approx((2 + 0 + 3) / 10)  # B=2, eos=0, C=3
    assert n[1] == 5


def test_mask_matches_hand_written_rows():
    chunk = torch.tensor([[1, 2, EOS, 3, EOS, EOS], [EOS, 1, EOS, 2, 3, 4], [1, 2, 3, 4, 5, 6]])
    want = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # B, eos1, C counted; eos2, pad not
            [1, 0, 1, 1, 1],  # position-0 EOS used the "first EOS": the next EOS is excluded
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(target_mask(chunk, EOS, "count_first"), want)
    excl = target_mask(chunk, EOS, "exclude_all")
    assert torch.equal(excl[0], torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool))
    trunc = target_mask(chunk, EOS, "truncate_at_first")
    assert torch.equal(trunc[0], torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool))


def test_padded_sample_without_eos_counts_its_first_pad():
    nll, n = counted(["AB", "ABCD"], GenPPLProtocol())
    assert n[0] == 2  # B and the first padding EOS
    assert nll[0] == pytest.approx(0.2)


def test_padding_group_decides_which_rows_get_a_pad():
    rows = ["AB", "ABCD", "AB", "AB"]
    _, n_all = counted(rows, GenPPLProtocol())
    _, n_grp = counted(rows, GenPPLProtocol(pad_group=2))
    assert list(n_all) == [2, 3, 2, 2]
    assert list(n_grp) == [2, 3, 1, 1]  # the second group has no longer row: no pad target


def test_non_overlapping_chunks_never_carry_context():
    ev = ToyEvaluator(context=4)
    nll, n = score_token_rows([[1] * 10], ev, GenPPLProtocol())
    assert n[0] == 3 + 3 + 1
    assert [c.shape[1] for c in ev.calls] == [4, 4, 2]


def test_sliding_windows_score_each_new_token_once():
    ev = ToyEvaluator(context=4)
    row = list(range(1, 9))
    nll, n = score_token_rows([row], ev, GenPPLProtocol(long_sample="sliding", stride=2))
    assert n[0] == 7
    assert nll[0] == pytest.approx(sum(range(2, 9)) / 10)


def test_corpus_aggregate_is_token_weighted_not_a_mean_of_ppls():
    ev = ToyEvaluator()
    res = generative_perplexity(["AB", "ABCDE"], ev, GenPPLProtocol(pad_group=1))
    # row 1 targets: B(0.2); row 2: B C D E (0.2+0.3+0.4+0.5)
    assert res["n_valid_tokens"] == 5
    assert res["gen_ppl"] == pytest.approx(math.exp((0.2 + 1.4) / 5))
    per = [math.exp(0.2), math.exp(1.4 / 4)]
    assert res["gen_ppl_mean_per_sample"] == pytest.approx(np.mean(per))
    assert res["eos_policy"] == "count_first" and res["evaluator"] == "toy"


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one sample"):
        generative_perplexity([], ToyEvaluator())
    with pytest.raises(ValueError, match="no target token counted"):
        generative_perplexity(["A"], ToyEvaluator())


def test_unigram_entropy_on_hand_made_sequences():
    ids = torch.tensor([[5, 5, 5, 5], [1, 2, 3, 4], [1, 1, 2, 2], [1, 1, 1, 2]])
    h = unigram_entropy(ids)
    want = [0.0, math.log(4), math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]
    np.testing.assert_allclose(h, want, rtol=1e-12)
    s = entropy_summary(ids)
    assert s["entropy_nats"] == pytest.approx(np.mean(want))
    assert s["frac_entropy_below_5"] == 1.0


# ---------------------------------------------------------------------------------------------
# Real evaluators against an independent computation
# ---------------------------------------------------------------------------------------------

TEXTS = [
    "the cat sat on the mat and the dog sat on the log",
    "a bird in the hand is worth two in the bush",
    "the quick brown fox jumps over the lazy dog<|endoftext|>and then it slept",
]


def train_tokenizer(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 3, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return tok, path


def test_hf_evaluator_equals_transformers_loss_by_hand(tmp_path):
    transformers = pytest.importorskip("transformers")
    from harness.quality.evaluators import HFEvaluator

    tok, path = train_tokenizer(tmp_path)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        eos_token_id=0,
        bos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(tmp_path / "lm")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")
    fast.save_pretrained(tmp_path / "lm")
    ev = HFEvaluator(tmp_path / "lm")
    assert ev.eos_id == 0 and ev.context == 64
    res = generative_perplexity(TEXTS[:2], ev, GenPPLProtocol(pad_group=1))
    # Independent: HF's own mean loss per sample (no padding, no EOS in these texts).
    total, count = 0.0, 0
    for t in TEXTS[:2]:
        ids = torch.tensor([tok.encode(t).ids])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        total += loss * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    assert res["n_valid_tokens"] == count
    assert res["gen_ppl"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_dit_evaluator_equals_direct_log_softmax(tmp_path):
    from harness.model.checkpoints import save_checkpoint
    from harness.model.network import DiT, DiTConfig, deterministic_init
    from harness.quality.evaluators import DiTEvaluator

    tok, path = train_tokenizer(tmp_path)
    V = tok.get_vocab_size() + 1
    cfg = DiTConfig(
        family="ar",
        vocab_size=V,
        hidden_size=32,
        n_blocks=2,
        n_heads=2,
        cond_dim=8,
        model_length=64,
        bos_index=0,
        eos_index=0,
        tokenizer=str(path),
    )
    model = deterministic_init(DiT(cfg)).eval()
    save_checkpoint(model, tmp_path / "ev")
    ev = DiTEvaluator(tmp_path / "ev")
    res = generative_perplexity(TEXTS, ev, GenPPLProtocol(pad_group=1))
    total, count = 0.0, 0
    for t in TEXTS:
        ids = tok.encode(t, add_special_tokens=False).ids
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x, is_causal=True).double()
        logits[..., V - 1] = float("-inf")
        lp = torch.log_softmax(logits, -1)[0, :-1].gather(-1, x[0, 1:, None]).squeeze(-1)
        seen_eos = ids[0] == 0
        for j, tgt in enumerate(ids[1:]):
            if tgt == 0 and seen_eos:
                continue
            seen_eos = seen_eos or tgt == 0
            total -= lp[j].item()
            count += 1
    assert res["n_valid_tokens"] == count
    assert res["gen_ppl"] == pytest.approx(math.exp(total / count), rel=1e-6)
    feats = ev.features(TEXTS)
    assert feats.shape == (3, 32) and torch.isfinite(feats).all()


def test_mauve_identical_sets_score_high_and_shifted_sets_low():
    pytest.importorskip("mauve")
    from harness.quality.metrics import mauve_score

    rng = np.random.default_rng(0)
    p = rng.normal(size=(120, 16))
    same = mauve_score(p, p + 1e-3 * rng.normal(size=p.shape))
    far = mauve_score(p, rng.normal(size=(120, 16)) + 3.0)
    assert same["mauve"] > 0.9
    assert far["mauve"] < 0.2
    assert same["mauve_n_seeds"] == 3
