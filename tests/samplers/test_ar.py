"""AR: the KV-cached sampler equals its uncached oracle token for token; NFE = L − 1; BOS."""

from __future__ import annotations

import pytest
import torch

from samplers import SamplerError
from samplers.ar import AR, ARConfig
from tests.conftest import TINY, tiny_model
from tests.samplers.fakes import FixedLogitsModel, position_table

BOS = TINY["vocab_size"] - 2


def run(sampler, model, b: int, L: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return sampler.sample(model, batch_size=b, seq_len=L, generator=gen)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_cached_equals_uncached_oracle(seed, top_p):
    """fp32, non-zero tiny DiT: identical tokens and NFE under the same seed."""
    model = tiny_model("ar", seed=seed, bos_index=BOS)
    cached = run(AR(ARConfig(kv_cache=True, top_p=top_p)), model, 3, 16, seed)
    oracle = run(AR(ARConfig(kv_cache=False, top_p=top_p)), model, 3, 16, seed)
    assert torch.equal(cached.tokens, oracle.tokens)
    assert cached.nfe_denoise == oracle.nfe_denoise == 15
    assert cached.token_forwards == 15 and oracle.token_forwards == 15 * 16 // 2
    assert bool((cached.tokens[:, 0] == BOS).all())


def test_cached_step_logits_equal_the_oracle():
    """Per step: the cached call's logits equal the full causal forward's last row."""
    model = tiny_model("ar", seed=5, bos_index=BOS)
    x = torch.randint(0, BOS, (2, 10), generator=torch.Generator().manual_seed(0))
    cache = model.new_kv_cache(2, 9)
    sampler = AR()
    with torch.no_grad():
        for i in range(9):
            cached = sampler.next_token_logits(model, x, i, cache)
            oracle = sampler.next_token_logits(model, x, i, None)
            torch.testing.assert_close(cached, oracle, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_call_pattern_and_nfe(kv_cache):
    L = 9
    model = FixedLogitsModel(position_table(L, 6), "ar", bos_index=4)
    result = run(AR(ARConfig(kv_cache=kv_cache)), model, 2, L, 0)
    assert result.nfe_total == len(model.calls) == L - 1
    if kv_cache:
        assert [(m, n, s) for m, n, s, _ in model.calls] == [
            (
                "forward_cached",
                1,
                i,
            )
            for i in range(L - 1)
        ]
    else:
        assert [(m, n) for m, n, _, _ in model.calls] == [("forward", i + 1) for i in range(L - 1)]
    assert result.calls == AR(ARConfig(kv_cache=kv_cache)).expected_calls(
        model.config, batch_size=2, seq_len=L
    )


def test_plan_is_replayable_without_reset():
    model = tiny_model("ar", bos_index=BOS)
    sampler = AR()
    plan = sampler.plan(model, batch_size=2, seq_len=12, generator=torch.Generator())
    a = sampler.execute(model, plan, generator=torch.Generator().manual_seed(1))
    b = sampler.execute(model, plan, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens, b.tokens)


def test_missing_bos_is_refused():
    model = tiny_model("ar")  # bos_index None
    with pytest.raises(SamplerError, match="'bos_index' is None"):
        run(AR(), model, 1, 8, 0)


def test_length_one_is_just_bos():
    result = run(AR(), tiny_model("ar", bos_index=BOS), 2, 1, 0)
    assert result.tokens.tolist() == [[BOS], [BOS]] and result.nfe_total == 0
