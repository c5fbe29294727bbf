"""Micro-benchmarks: one full sample (the timed ``execute``) per sampler setting.

cpu-s DiT with seeded random weights (``deterministic_init``), fp32, L = 128, batch 1. The plan
(step sizes, π, rotary tables, cache allocation) is built in ``setup``, outside the timer, as
the runner does. Opt-in::

    OMP_NUM_THREADS=1 python -m pytest tests/bench/test_sampler_bench_b.py -m benchmark \
        --benchmark-enable --benchmark-columns=median,min,max,rounds

Shapes, NFE and token-forwards go to ``benchmark.extra_info``; frontier numbers come from the
runner, never from here.
"""

from __future__ import annotations

import pytest
import torch

from harness.model.network import DiT, DiTConfig, deterministic_init
from samplers import SAMPLERS

pytestmark = pytest.mark.benchmark

L = 128

CASES = [
    *[
        ("esolm", {"alpha0_eval": a, "num_steps": T, "kv_cache": kv})
        for a in (1.0, 0.5)
        for T in (16, 128)
        for kv in (True, False)
    ],
    *[("esolm_block", {"num_steps": 16, "kv_cache": kv}) for kv in (True, False)],
    *[
        ("bd3lm", {"block_size": B, "steps_per_block": B, "mode": mode, "cache": cache})
        for B in (4, 16)
        for mode in ("ancestral", "first_hitting")
        for cache in ("efficient", "reference", "none")
    ],
]


def case_id(case) -> str:
    name, kw = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.fixture(scope="module")
def models():
    out = {}
    for family in ("esolm", "bd3lm"):
        cfg = DiTConfig.from_size("cpu-s", family=family, bos_index=0)
        out[family] = deterministic_init(DiT(cfg), seed=0).eval().freeze_conditioning()
    return out


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_full_sample(benchmark, models, case):
    name, kw = case
    cls = SAMPLERS.get(name)
    sampler = cls(cls.config_class(**kw))
    model = models[cls.families[0]]

    def setup():
        plan = sampler.plan(
            model, batch_size=1, seq_len=L, generator=torch.Generator().manual_seed(0)
        )
        return (plan,), {}

    def fn(plan):
        return sampler.execute(model, plan, generator=torch.Generator().manual_seed(1))

    out = benchmark.pedantic(fn, setup=setup, rounds=5, warmup_rounds=1)
    assert (out.tokens != model.config.mask_id).all()
    if name == "esolm" and kw["kv_cache"]:
        assert out.token_forwards == 2 * L - out.step_sizes[-1]
    if name == "bd3lm" and kw["mode"] == "first_hitting":
        stores = 0 if kw["cache"] == "none" else L // kw["block_size"]
        assert out.nfe_total == L - 1 + stores
    benchmark.extra_info.update(
        sampler=name,
        **{f"p_{k}": v for k, v in kw.items()},
        seq_len=L,
        batch_size=1,
        nfe_denoise=out.nfe_denoise,
        nfe_total=out.nfe_total,
        nfe_expected=out.info.get("nfe_expected"),
        token_forwards=out.token_forwards,
        attn_entries=sum(c[1] * c[2] for c in out.calls),
    )
