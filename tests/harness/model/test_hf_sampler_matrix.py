"""Every HF adapter kind × every sampler that serves it × every unmasking policy.

For each combination, on tiny random models written locally: the same seed gives identical
tokens and calls on repeat, a prompt comes back unchanged, nothing is left masked, the NFE equals
the number of calls the model saw (a forward hook, independent of the sampler's own count), and a
different seed gives different tokens where sampling is random. The samplers' exact/cached and
pipeline equalities are tested in their own files; here the point is that nothing in the matrix
is left out.
"""

from __future__ import annotations

import pytest
import torch

from samplers import POLICIES
from samplers.base import SamplerError
from samplers.diffusers_blocks import DiffusersBlocks, DiffusersBlocksConfig
from samplers.mdlm_ancestral import MDLMAncestral, MDLMConfig
from samplers.mdlm_first_hitting import FirstHittingConfig, MDLMFirstHitting
from samplers.mdlm_semiar import MDLMBlocks, MDLMBlocksConfig

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

from harness.model.hf import tiny as H  # noqa: E402
from harness.model.hf.load import load  # noqa: E402

MASK_KINDS = ["modernbert", "bert", "llada", "dream"]
P, L, B = 4, 16, 2


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    trust = {"trust_remote_code": True}
    return {
        "modernbert": load(f"hf:{H.write_modernbert(root / 'modernbert')}"),
        "bert": load(f"hf:{H.write_bert(root / 'bert')}"),
        "llada": load(f"hf:{H.write_llada_style(root / 'llada')}", trust),
        "dream": load(f"hf:{H.write_dream_style(root / 'dream')}", trust),
        "gemma": load(f"hf:{H.write_diffusion_gemma(root / 'gemma')}"),
    }


def policy_samplers():
    """(id, sampler) for every policy under ``mdlm`` and ``mdlm_blocks``."""
    out = []
    for policy in POLICIES.names():
        thr = 0.5 if policy == "threshold" else None
        out.append(
            (
                f"mdlm-{policy}",
                MDLMAncestral(MDLMConfig(num_steps=4, policy=policy, policy_threshold=thr)),
            )
        )
        cfg = MDLMBlocksConfig(
            block_length=4, steps_per_block=2, policy=policy, policy_threshold=thr
        )
        out.append((f"mdlm_blocks-{policy}", MDLMBlocks(cfg)))
    out.append(("first_hitting", MDLMFirstHitting(FirstHittingConfig())))
    out.append(
        (
            "diffusers_blocks",
            DiffusersBlocks(
                DiffusersBlocksConfig(block_size=4, num_inference_steps=2, threshold=0.9)
            ),
        )
    )
    return out


MASK_SAMPLERS = policy_samplers()


def prompt(seed: int = 5) -> torch.Tensor:
    return torch.randint(3, 60, (B, P), generator=torch.Generator().manual_seed(seed))


def run(sampler, model, seed: int, hook=None, **kw):
    """The result and the forwards of ``hook`` (default: the model) during the run."""
    calls = []
    handle = (hook or model).register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        res = sampler.sample(
            model, batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(seed), **kw
        )
    finally:
        handle.remove()
    return res, len(calls)


def check(sampler, model, mask_id, random_draws: bool = True):
    first, seen = run(sampler, model, 0, prompt=prompt())
    again, _ = run(sampler, model, 0, prompt=prompt())
    other, _ = run(sampler, model, 1, prompt=prompt())
    assert torch.equal(first.tokens, again.tokens) and first.calls == again.calls
    assert torch.equal(first.tokens[:, :P], prompt())
    assert first.tokens.shape == (B, L)
    if mask_id is not None:
        assert not (first.tokens == mask_id).any()
    assert first.nfe_denoise == seen  # every denoising call reached the model's forward
    if random_draws:
        assert not torch.equal(first.tokens, other.tokens)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize(("name", "sampler"), MASK_SAMPLERS, ids=[n for n, _ in MASK_SAMPLERS])
def test_mask_adapter_sampler_policy(adapters, kind, name, sampler):
    check(sampler, adapters[kind], H.MASK_ID)


@pytest.mark.parametrize(
    "scheduler", ["EntropyBoundScheduler", "DiscreteDDIMScheduler", "BlockRefinementScheduler"]
)
def test_diffusion_gemma_with_every_scheduler(adapters, scheduler):
    model = adapters["gemma"]
    cfg = DiffusersBlocksConfig(
        scheduler=scheduler, block_size=None, num_inference_steps=3, confidence_threshold=None
    )
    s = DiffusersBlocks(cfg)
    first, seen = run(s, model, 0, hook=model.model, prompt=prompt())  # decoder forwards
    again, _ = run(s, model, 0, prompt=prompt())
    other, _ = run(s, model, 1, prompt=prompt())
    assert torch.equal(first.tokens, again.tokens) and first.calls == again.calls
    assert torch.equal(first.tokens[:, :P], prompt())
    assert first.nfe_denoise == seen == 2 * 3  # (16 − 4) / 8 → 2 canvases × 3 steps
    assert not torch.equal(first.tokens, other.tokens)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_fast_dllm_caches_on_an_hf_model_are_refused_clearly(adapters, cache):
    """HF adapters have no K/V cache path: the approximate caches are refused, not crashed."""
    sampler = MDLMBlocks(MDLMBlocksConfig(block_length=4, steps_per_block=2, cache=cache))
    with pytest.raises(SamplerError, match="cache"):
        sampler.sample(adapters["modernbert"], batch_size=B, seq_len=L, generator=torch.Generator())
