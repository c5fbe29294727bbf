"""The quality stage scores a run's saved samples and joins them onto the cell rows."""

from __future__ import annotations

import pytest
import torch
import yaml

from harness.model.checkpoints import save_checkpoint
from harness.model.network import DiT, DiTConfig, deterministic_init
from harness.quality.evaluators import DiTEvaluator, decode_ids, load_text_tokenizer
from harness.quality.metrics import PROTOCOLS, entropy_summary, generative_perplexity
from harness.quality.stage import score_run
from harness.results import load_results, load_samples
from harness.run.sweep import run_experiment
from tests.harness.quality.test_metrics import train_tokenizer


@pytest.fixture
def ar_checkpoint(tmp_path):
    tok, path = train_tokenizer(tmp_path)
    V = tok.get_vocab_size() + 1
    cfg = DiTConfig(
        family="ar",
        vocab_size=V,
        hidden_size=32,
        n_blocks=2,
        n_heads=2,
        cond_dim=8,
        model_length=32,
        bos_index=0,
        eos_index=0,
        tokenizer=str(path),
    )
    save_checkpoint(deterministic_init(DiT(cfg), seed=4).eval(), tmp_path / "ar")
    return tmp_path / "ar"


def test_score_run_equals_direct_metrics_and_joins(tmp_path, ar_checkpoint):
    config = {
        "name": "qstage",
        "checkpoints": {
            "ar": str(ar_checkpoint),
            "rand": {"path": "random:tiny", "vocab_size": 64, "model": {"bos_index": 0}},
        },
        "samplers": [
            {"name": "ar", "sampler": "ar", "checkpoint": "ar"},
            {"name": "ar_rand", "sampler": "ar", "checkpoint": "rand"},
        ],
        "seq_lens": [24],
        "batch_sizes": [3],
        "seeds": [0],
        "device": "cpu",
        "timing": {"mode": "full", "repeats": 1, "warmup": 0},
        "output_dir": str(tmp_path / "results"),
    }
    cfg_path = tmp_path / "q.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    run_dir = run_experiment(cfg_path, progress=False)
    out = score_run(run_dir, f"dit:{ar_checkpoint}")
    assert sorted(out["quality_status"].str[:7]) == ["ok", "skipped"]

    df = load_results(run_dir)
    row = df[df["label"] == "ar"].iloc[0]
    tokens = load_samples(run_dir, row["cell_id"])
    texts = decode_ids(load_text_tokenizer(ar_checkpoint.parent / "tokenizer.json"), tokens, set())
    want = generative_perplexity(
        texts, DiTEvaluator(ar_checkpoint), PROTOCOLS["esolm"], max_length=24
    )
    assert row["gen_ppl"] == pytest.approx(want["gen_ppl"], rel=1e-12)
    assert row["entropy_nats"] == pytest.approx(entropy_summary(tokens)["entropy_nats"])
    assert row["evaluator"] == f"dit:{ar_checkpoint.name}"
    rand = df[df["label"] == "ar_rand"].iloc[0]
    assert rand["gen_ppl"] != rand["gen_ppl"]  # NaN: no text for random-weight cells
    # A second call reuses the shards (no re-scoring) and returns the same numbers.
    again = score_run(run_dir, f"dit:{ar_checkpoint}")
    assert again.loc[again["cell_id"] == row["cell_id"], "gen_ppl"].item() == row["gen_ppl"]
    assert torch.equal(tokens, load_samples(run_dir, row["cell_id"]))


def test_mauve_against_reference_texts(tmp_path, ar_checkpoint):
    pytest.importorskip("mauve")
    config = {
        "name": "qmauve",
        "checkpoints": {"ar": str(ar_checkpoint)},
        "samplers": [{"name": "ar", "sampler": "ar"}],
        "seq_lens": [24],
        "batch_sizes": [6],
        "timing": {"mode": "full", "repeats": 1, "warmup": 0},
        "output_dir": str(tmp_path / "results"),
    }
    cfg_path = tmp_path / "m.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    run_dir = run_experiment(cfg_path, progress=False)
    refs = [f"the cat sat on the mat number {i} and the dog sat on the log" for i in range(12)]
    out = score_run(run_dir, f"dit:{ar_checkpoint}", reference_texts=refs)
    assert 0.0 <= out["mauve"].item() <= 1.0 and out["mauve_n_seeds"].item() == 3


def test_unknown_protocol_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown Gen PPL protocol 'bd3'"):
        score_run(tmp_path, "dit:x", protocol="bd3")
