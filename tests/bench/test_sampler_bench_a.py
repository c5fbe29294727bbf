"""Micro-benchmarks: one full sample per sampler on a random-weight cpu-s model (L = 128, b = 1).

Run: ``make bench`` (or ``pytest -m benchmark --benchmark-enable tests/bench``). The table lists
seconds per sample; NFE and token-forwards are in ``extra_info``. Frontier numbers come from the
runner, never from here.
"""

from __future__ import annotations

import pytest
import torch

from harness.model.network import DiT, DiTConfig, deterministic_init
from samplers import SAMPLERS

pytestmark = pytest.mark.benchmark

L, B, V = 128, 1, 8193
CASES = {
    "mdlm_T16": ("mdlm", {"num_steps": 16}),
    "mdlm_T64": ("mdlm", {"num_steps": 64}),
    "mdlm_first_hitting": ("mdlm_first_hitting", {}),
    "ar_cached": ("ar", {"kv_cache": True}),
    "ar_uncached": ("ar", {"kv_cache": False}),
}


def cpu_s(family: str) -> DiT:
    cfg = DiTConfig.from_size("cpu-s", family=family, vocab_size=V, model_length=L, bos_index=V - 2)
    return deterministic_init(DiT(cfg)).eval().freeze_conditioning()


@pytest.mark.parametrize("case", list(CASES))
def test_one_sample(benchmark, case):
    name, params = CASES[case]
    cls = SAMPLERS.get(name)
    sampler = cls(cls.config_class(**params))
    model = cpu_s(sampler.families[0])

    def one_sample():
        gen = torch.Generator().manual_seed(0)
        return sampler.sample(model, batch_size=B, seq_len=L, generator=gen)

    result = benchmark.pedantic(one_sample, rounds=3, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        sampler=name,
        seq_len=L,
        batch_size=B,
        nfe_total=result.nfe_total,
        token_forwards=result.token_forwards,
        **{k: v for k, v in params.items()},
    )
    assert result.tokens.shape == (B, L)
    assert not (result.tokens == model.config.mask_id).any()
    assert result.nfe_total == len(result.calls) >= 1
