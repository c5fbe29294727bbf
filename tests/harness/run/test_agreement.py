"""The approximate-cache agreement report (``harness/run/agreement.py``) and its runner columns.

Where theory says Fast-dLLM's caches equal the exact path, the report must say exactly 1.0 and
drift exactly 0.0; the cases (fp32 tiny DiT, every matrix ×2 so that the caches *do* change the
outcome elsewhere):
* ``steps_per_block = 1``: a block's only call is its block-start full forward, the exact call;
* ``prefix`` with no prompt and one block: every call feeds the whole canvas at ``start = 0``;
* ``dual`` with no prompt and one block: no prefix or suffix to reuse (run as ``prefix``);
* a model whose logits ignore the other tokens (the position-only fake): nothing is stale.
A prompt with one block is *not* exact: the prompt's K/V were computed while the block was all
masks, and a bidirectional prompt row attends to them. Disagreement is then constructed on the
same ×2 model with four blocks; token agreement and the quality delta are checked against an
independent computation from two plain ``sample`` runs.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from harness import results
from harness.measure import costmodel
from harness.model.modelspec import load_model
from harness.run import agreement
from harness.run.agreement import AgreementError, compare
from harness.run.experiment import load_experiment
from harness.run.sweep import run_experiment
from samplers.mdlm_semiar import MDLMBlocks, MDLMBlocksConfig
from tests.conftest import tiny_model
from tests.samplers.fake_models_b import fixed_model

L = 16


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def loud_model():
    model = tiny_model("mdlm")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(2.0)
    return model


def prompt_of(P: int, b: int = 3, vocab: int = 33) -> torch.Tensor | None:
    return torch.randint(0, vocab - 1, (b, P), generator=gen(5)) if P else None


def report(model, P: int, seed: int = 11, scorer=None, **cfg) -> agreement.Agreement:
    return compare(
        "mdlm_blocks",
        MDLMBlocksConfig(**cfg),
        model,
        batch_size=3,
        seq_len=L,
        seed=seed,
        prompt=prompt_of(P, vocab=model.config.vocab_size),
        scorer=scorer,
    )


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize(
    ("P", "B", "T"),
    [(3, 4, 1), (0, 5, 1), (0, L, 4)],
    ids=["one-step-blocks", "one-step-blocks-P0", "one-block-P0"],
)
def test_exactly_full_agreement_where_theory_says_so(cache, P, B, T):
    rep = report(loud_model(), P, block_length=B, steps_per_block=T, cache=cache)
    assert rep.tokens == 1.0
    assert rep.logit_drift_max == 0.0 and rep.logit_drift_mean == 0.0
    assert len(rep.step_drift) == rep.calls_exact == rep.calls_approx > 0


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_model_blind_to_other_tokens_agrees_exactly_with_many_blocks(cache):
    t = 1.5 * torch.randn(L, 9, generator=gen(0))
    t[:, -1] = 10.0
    rep = report(fixed_model("mdlm", t), 3, block_length=4, steps_per_block=3, cache=cache)
    assert (rep.tokens, rep.logit_drift_max) == (1.0, 0.0) and len(rep.step_drift) == 3 + 3 + 3 + 1


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_stale_kv_disagree_and_the_report_matches_two_plain_runs(cache):
    """×2 model, P = 3, four blocks of 4, T′ = 4: the first call (exact) has zero drift, the
    second (stale prompt K/V) does not; agreement and quality delta equal their independent
    computation from the two tokens tensors."""
    model = loud_model()

    def score(tokens: torch.Tensor) -> float:  # any deterministic score of the samples
        return float((tokens % 2 == 0).double().mean())

    cfg = dict(block_length=4, steps_per_block=4)
    rep = report(model, 3, scorer=score, cache=cache, **cfg)
    runs = [
        MDLMBlocks(MDLMBlocksConfig(cache=c, **cfg))
        .sample(model, batch_size=3, seq_len=L, generator=gen(11), prompt=prompt_of(3))
        .tokens
        for c in (cache, "none")
    ]
    same = (runs[0][:, 3:] == runs[1][:, 3:]).sum().item()
    assert rep.tokens == same / (3 * 13) < 1.0
    assert rep.quality_delta == pytest.approx(score(runs[0]) - score(runs[1]), abs=0)
    assert rep.step_drift[0] == 0.0 and rep.step_drift[1] > 0.0
    assert rep.logit_drift_max > 1.0 and len(rep.step_drift) == 4 + 4 + 4 + 1
    assert rep == report(model, 3, scorer=score, cache=cache, **cfg)  # deterministic


def test_prompt_with_one_block_is_not_exact():
    rep = report(loud_model(), 3, block_length=L, steps_per_block=4, cache="prefix")
    assert rep.step_drift[0] == 0.0 and rep.logit_drift_max > 0.0


def test_exact_config_is_refused_with_a_one_line_error():
    with pytest.raises(AgreementError, match=r"got cache='none'\. Set cache: prefix"):
        report(tiny_model("mdlm"), 0, cache="none")
    assert math.isnan(report(tiny_model("mdlm"), 0, cache="prefix").quality_delta)


def test_runner_adds_agree_columns_to_approximate_cells_only(tmp_path, monkeypatch):
    def no_peaks(*_a, **_k):  # skip the slow device-peak measurement: predictions become NaN
        raise RuntimeError("not measured in this test")

    monkeypatch.setattr(costmodel, "measure_peaks", no_peaks)
    cfg = {
        "name": "agree",
        "checkpoints": {"tiny": {"path": "random:tiny", "vocab_size": 33, "init_seed": 3}},
        "samplers": [
            {
                "sampler": "mdlm_blocks",
                "params": {"block_length": 4, "steps_per_block": 4, "cache": ["none", "dual"]},
            }
        ],
        "seq_lens": [12],
        "batch_sizes": [2],
        "seeds": [4],
        "timing": {"repeats": 1, "warmup": 1},
        "output_dir": str(tmp_path / "results"),
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _, cells = load_experiment(path)
    df = results.load_results(run_experiment(path, progress=False))
    assert list(df["status"]) == ["ok", "ok"] and list(df["p_cache"]) == ["none", "dual"]
    none, dual = df.iloc[0], df.iloc[1]
    assert math.isnan(none["agree_tokens"])
    model, _ = load_model("random:tiny", cells[1].model_cfg, 3, "cpu")
    want = compare(
        "mdlm_blocks",
        MDLMBlocksConfig(block_length=4, steps_per_block=4, cache="dual"),
        model,
        batch_size=2,
        seq_len=12,
        seed=4,
    )
    assert dual["agree_tokens"] == want.tokens
    assert dual["agree_logit_drift_max"] == want.logit_drift_max
    assert dual["agree_logit_drift_mean"] == want.logit_drift_mean
