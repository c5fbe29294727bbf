"""The contract every registered sampler, schedule and policy meets (house-style §9).

Parametrized over the registries, so a new plugin is covered as soon as it is imported by
``samplers/__init__.py``. No test here branches on a name. Requirements this places on a sampler:

* its DEFAULT config runs on ``tiny_model(families[0])`` at L = 16, batch 2 (the tiny model gets
  ``bos_index = V − 2`` and, if the config has one, the config's ``block_size``);
* its default config has a fixed (non-adaptive) schedule, so profile mode at batch 1 with the
  same seed makes exactly the calls of full mode (profile simulates a single sequence);
* its default config accepts a (b, P) ``prompt`` at L = 32, P = 16 (``samplers/base.py``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from dlmcore.configio import ConfigError, from_dict, to_dict
from harness.model.network import FAMILIES
from samplers import POLICIES, SAMPLERS, SCHEDULES, Sampler, SamplerError
from samplers.mdlm_ancestral import MDLMConfig
from tests.conftest import TINY, tiny_model

L, B = 16, 2
MASK = TINY["vocab_size"] - 1


def model_for(sampler, seed: int = 0):
    """A tiny model of the sampler's first family, shaped by the sampler's own config."""
    overrides = {"bos_index": TINY["vocab_size"] - 2}
    block_size = getattr(sampler.config, "block_size", None)
    if block_size is not None:
        overrides["block_size"] = block_size
    return tiny_model(sampler.families[0], seed=seed, **overrides)


def default_sampler(name: str, **changes):
    cls = SAMPLERS.get(name)
    return cls(dataclasses.replace(cls.config_class(), **changes))


def run(sampler, seed: int = 0, batch_size: int = B, model=None):
    model = model if model is not None else model_for(sampler)
    gen = torch.Generator().manual_seed(seed)
    return sampler.sample(model, batch_size=batch_size, seq_len=L, generator=gen)


_RESULTS: dict[str, object] = {}


def default_result(name: str):
    if name not in _RESULTS:
        _RESULTS[name] = run(default_sampler(name))
    return _RESULTS[name]


def check_result(result, batch_size: int = B, seq_len: int = L) -> None:
    """Shape, dtype, no mask left, and the work counters' consistency."""
    assert result.tokens.shape == (batch_size, seq_len)
    assert result.tokens.dtype == torch.int64
    assert not (result.tokens == MASK).any(), "a mask token survived sampling"
    assert 0 <= result.nfe_denoise <= result.nfe_total
    assert len(result.calls) == result.nfe_total, "one CallRecord per network call"
    assert all(len(c) == 4 and all(int(v) == v and v >= 0 for v in c) for c in result.calls)
    assert result.token_forwards == sum(c[0] for c in result.calls)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------

SAMPLER_NAMES = SAMPLERS.names()

DIFFUSERS_NUMERICS = {"diffusers_blocks", "diffusers_pipeline"}
"""Samplers whose sampling arguments are diffusers' own (temperature 0 = greedy, top_p / top_k
null = off) and that have no network-only ``profile`` mode (their steps are adaptive). They
are exempt from the shared-numerics and profile checks below, and from nothing else; their
numerics are tested against diffusers in ``test_diffusers_*.py``. The set is closed: a new
sampler without the shared fields fails ``test_sampler_class_surface``."""

NATIVE = [n for n in SAMPLER_NAMES if n not in DIFFUSERS_NUMERICS]
ALL_FAMILIES = (*FAMILIES, "uniform_block")  # uniform_block: HF DiffusionGemma adapters


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_sampler_class_surface(name):
    cls = SAMPLERS.get(name)
    assert cls.name == name
    assert cls.families and all(f in ALL_FAMILIES for f in cls.families)
    assert cls.families[0] in FAMILIES  # the contract runs it on a DiT of that family
    assert dataclasses.is_dataclass(cls.config_class)
    assert cls.config_class.__dataclass_params__.frozen
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    shared = {"temperature", "top_p", "top_p_convention", "profile"} <= fields
    assert shared != (name in DIFFUSERS_NUMERICS)
    assert cls.config_class().problems() == []
    assert isinstance(cls(cls.config_class()), Sampler)
    assert cls(cls.config_class()).cache_kind() in (None, "kv", "qkv", "px0")


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_default_sample_shape_no_mask_and_counters(name):
    check_result(default_result(name))


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_deterministic_under_seed(name):
    a, b = default_result(name), run(default_sampler(name))
    assert torch.equal(a.tokens, b.tokens)
    assert (a.nfe_denoise, a.nfe_total, a.calls) == (b.nfe_denoise, b.nfe_total, b.calls)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_different_seeds_differ(name):
    a, b = default_result(name), run(default_sampler(name), seed=1)
    assert not torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_config_round_trip(name):
    cls = SAMPLERS.get(name)
    cfg = cls.config_class()
    data = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    back = from_dict(cls.config_class, data)
    assert back == cfg
    assert to_dict(back) == to_dict(cfg)


@pytest.mark.parametrize("name", NATIVE)
def test_profile_makes_the_same_calls(name):
    """Profile mode replays a single sequence: at batch 1, same seed, the calls are identical."""
    full = run(default_sampler(name), seed=3, batch_size=1)
    prof = run(default_sampler(name, profile=True), seed=3, batch_size=1)
    assert prof.calls == full.calls
    assert (prof.nfe_denoise, prof.nfe_total) == (full.nfe_denoise, full.nfe_total)
    assert prof.token_forwards == full.token_forwards


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_plan_replays(name):
    """A plan executed twice with the same generator state gives the same result."""
    sampler = default_sampler(name)
    model = model_for(sampler)
    plan = sampler.plan(model, batch_size=B, seq_len=L, generator=torch.Generator())
    r1 = sampler.execute(model, plan, generator=torch.Generator().manual_seed(5))
    r2 = sampler.execute(model, plan, generator=torch.Generator().manual_seed(5))
    assert torch.equal(r1.tokens, r2.tokens) and r1.calls == r2.calls
    check_result(r1)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_prompt_contract(name):
    """A prompt survives unchanged, info records P and L − P, profile replays the calls, a plan
    replays, and ``expected_calls(prompt_len=P)`` gives well-formed records."""
    Lp, P = 32, 16
    sampler = default_sampler(name)
    model = model_for(sampler)
    prompt = torch.randint(0, MASK - 2, (B, P), generator=torch.Generator().manual_seed(9))
    kw = dict(batch_size=B, seq_len=Lp, prompt=prompt)
    res = sampler.sample(model, generator=torch.Generator().manual_seed(2), **kw)
    check_result(res, seq_len=Lp)
    assert torch.equal(res.tokens[:, :P], prompt)
    assert (res.info["prompt_len"], res.info["gen_tokens"]) == (P, Lp - P)
    plan = sampler.plan(model, generator=torch.Generator().manual_seed(2), **kw)
    r1, r2 = (
        sampler.execute(model, plan, generator=torch.Generator().manual_seed(5)) for _ in "12"
    )
    assert torch.equal(r1.tokens, r2.tokens) and r1.calls == r2.calls
    assert torch.equal(r1.tokens[:, :P], prompt)
    one = dict(batch_size=1, seq_len=Lp, prompt=prompt[:1])
    full = sampler.sample(model, generator=torch.Generator().manual_seed(4), **one)
    if name not in DIFFUSERS_NUMERICS:
        prof = default_sampler(name, profile=True).sample(
            model, generator=torch.Generator().manual_seed(4), **one
        )
        assert prof.calls == full.calls
    calls = sampler.expected_calls(model.config, batch_size=B, seq_len=Lp, prompt_len=P)
    assert len(calls) >= 1
    assert all(len(c) == 4 and all(int(v) == v and v >= 0 for v in c) for c in calls)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_expected_calls_are_records(name):
    sampler = default_sampler(name)
    calls = sampler.expected_calls(model_for(sampler).config, batch_size=B, seq_len=L)
    assert len(calls) >= 1
    assert all(len(c) == 4 and all(int(v) == v and v >= 0 for v in c) for c in calls)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_wrong_family_is_refused(name):
    sampler = default_sampler(name)
    other = [f for f in FAMILIES if f not in sampler.families]
    model = tiny_model(other[0], bos_index=TINY["vocab_size"] - 2)
    with pytest.raises(SamplerError, match=f"'{other[0]}'"):
        run(sampler, model=model)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_bad_sizes_are_refused(name):
    sampler = default_sampler(name)
    with pytest.raises(SamplerError, match="batch_size is 0"):
        sampler.sample(model_for(sampler), batch_size=0, seq_len=L, generator=torch.Generator())


@pytest.mark.parametrize("name", NATIVE)
def test_bad_numerics_are_refused_all_at_once(name):
    cls = SAMPLERS.get(name)
    data = {**to_dict(cls.config_class()), "top_p": 1.5, "temperature": 0.0}
    with pytest.raises(ConfigError) as err:
        from_dict(cls.config_class, data)
    assert "'top_p' is 1.5" in str(err.value) and "'temperature' is 0.0" in str(err.value)
    bad = dataclasses.replace(cls.config_class(), top_p=0.0)
    with pytest.raises(ValueError, match="'top_p' is 0.0"):  # ConfigError or SamplerError
        cls(bad)


# ---------------------------------------------------------------------------------------------
# Schedules and policies
# ---------------------------------------------------------------------------------------------


def check_schedule_contract(schedule) -> None:
    """α non-increasing with α(0) ≈ 1 and α(1) ≈ 0; counts well formed and summing to n."""
    t = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    a = schedule.alpha(t)
    assert a.dtype == torch.float64 and a.shape == t.shape
    assert bool((a[1:] <= a[:-1] + 1e-12).all()), "alpha must be non-increasing in t"
    assert abs(float(a[0]) - 1.0) < 1e-2 and abs(float(a[-1])) < 1e-2
    for n, T in [(16, 5), (16, 16), (7, 64), (100, 3), (1, 1), (0, 4)]:
        gen = torch.Generator().manual_seed(n * 1000 + T)
        c = schedule.counts(n, T, gen)
        assert len(c) == T and all(isinstance(v, int) and v >= 0 for v in c)
        assert sum(c) == n, f"counts {c} do not sum to {n}"
        half = schedule.counts(n, T, gen, alpha0=0.5)
        assert len(half) == T and all(v >= 0 for v in half) and sum(half) <= n


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_contract(name):
    check_schedule_contract(SCHEDULES.get(name)())


@pytest.mark.parametrize("name", POLICIES.names())
def test_policy_contract(name):
    """A subset of the masked positions: min(k, masks) per row (at least that if adaptive)."""
    policy = POLICIES.get(name)()
    g = torch.Generator().manual_seed(0)
    confidence = torch.rand(5, 12, generator=g, dtype=torch.float64)
    masked = torch.rand(5, 12, generator=g) < 0.6
    masked[0] = False
    masked[1] = True
    k = torch.tensor([2, 0, 3, 20, 1])
    sel = policy.select(confidence, masked, k, g)
    assert sel.dtype == torch.bool and sel.shape == masked.shape
    assert not (sel & ~masked).any()
    floor = torch.minimum(k, masked.sum(-1))
    got = sel.sum(-1)
    assert bool((got >= floor).all()) if policy.adaptive else torch.equal(got, floor)


@pytest.mark.parametrize("policy", POLICIES.names())
@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_every_schedule_and_policy_runs_through_mdlm(schedule, policy):
    sampler = SAMPLERS.get("mdlm")(MDLMConfig(num_steps=8, schedule=schedule, policy=policy))
    result = run(sampler, seed=11)
    check_result(result)
    assert 1 <= result.nfe_total <= 8
