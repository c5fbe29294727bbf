"""``diffusers_pipeline``: diffusers' LLaDA2 / DiffusionGemma pipelines timed as black boxes.

Oracles: the tokens equal a direct call of the diffusers pipeline with the same arguments and a
generator of the same seed; the call counts equal counts taken by wrapping the networks'
``forward`` (not the sampler's hooks); the call records equal hand-worked lists; DiffusionGemma's
last decoder logits through the renaming proxy give the model's own ``generate``; the DiT shim's
logits equal the DiT run on the unpadded rows; the EOS fill is checked on hand-worked tensors and
on a fake model that always says EOS. Tiny CPU models (``harness/model/hf/tiny.py``).
"""

from __future__ import annotations

import dataclasses
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from dlmcore.configio import ConfigError, collect, from_dict
from harness.model.hf import tiny as H
from harness.model.hf.load import load
from samplers.base import SamplerError
from samplers.diffusers_pipeline import (
    DiffusersPipeline,
    DiffusersPipelineConfig,
    PromptProcessor,
    fill_masks_after_eos,
    gemma_model_for_pipeline,
    gemma_needs_rename,
    pad_with,
    shim_classes,
)
from tests.conftest import tiny_model

diffusers = pytest.importorskip("diffusers")

FAST = {"block_length": 4, "num_inference_steps": 4, "editing_threshold": None}
"""LLaDA2 call_args small enough for CPU: blocks of 4, 4 steps, no editing post-steps."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "modernbert": load(f"hf:{H.write_modernbert(root / 'modernbert')}"),
        "gemma": load(f"hf:{H.write_diffusion_gemma(root / 'gemma')}"),
    }


def prompt_ids(b: int, P: int, seed: int = 0) -> torch.Tensor:
    """Ordinary token ids 3 … 59 (no specials, no mask)."""
    return torch.randint(3, 60, (b, P), generator=torch.Generator().manual_seed(seed))


def sampler(**cfg) -> DiffusersPipeline:
    return DiffusersPipeline(DiffusersPipelineConfig(**cfg))


def llada(**call_args) -> DiffusersPipeline:
    return sampler(call_args={**FAST, **call_args})


def gemma(scheduler: str = "EntropyBoundScheduler", scheduler_args=None, **call_args):
    args = {"num_inference_steps": 4, **call_args}
    return sampler(
        pipeline="DiffusionGemmaPipeline",
        scheduler=scheduler,
        scheduler_args=scheduler_args or {},
        call_args=args,
    )


def run(s, model, seq_len, prompt=None, seed=0, batch_size=2):
    gen = torch.Generator().manual_seed(seed)
    return s.sample(model, batch_size=batch_size, seq_len=seq_len, generator=gen, prompt=prompt)


class CountForward:
    """Replaces ``module.forward`` (an instance attribute, not a hook) to count the calls and
    keep the width of what each call fed under ``key``; ``restore()`` puts it back."""

    def __init__(self, module: nn.Module, key: str) -> None:
        self.module, self.key, self.widths = module, key, []
        self.original = module.forward
        self.__wrapped__ = self.original  # inspect.signature sees the real forward
        module.forward = self

    def __call__(self, *args, **kwargs):
        x = kwargs.get(self.key)
        self.widths.append(int((x if x is not None else args[0]).shape[1]))
        return self.original(*args, **kwargs)

    def restore(self) -> None:
        del self.module.forward


# ---- (1) the hooks' NFE equals an independent count -------------------------------------------


@pytest.mark.parametrize("edit", [None, 0.05])
def test_llada2_nfe_equals_the_model_forwards_counted_by_a_wrapper(models, edit):
    """Raw ModernBERT under LLaDA2Pipeline, P = 5, L = 15, B = T' = 4. Block [4, 8) holds 3
    masks: 3 steps, then one more call (the loop tests for masks before the call). With
    editing on (threshold 0.05, ``max_post_steps`` 2) post-steps add calls, at most
    T' + max_post_steps per block (the bound, 18)."""
    a = models["modernbert"]
    s = llada(temperature=1.0, editing_threshold=edit, max_post_steps=2, eos_early_stop=False)
    count = CountForward(a.model, "input_ids")
    try:
        res = run(s, a, 15, prompt_ids(2, 5))
    finally:
        count.restore()
    assert res.info["model_given"] == "raw"
    assert res.nfe_denoise == res.nfe_total == len(count.widths)
    assert [c[0] for c in res.calls] == count.widths
    assert res.token_forwards == sum(count.widths)
    bound = s.expected_calls(a.config, batch_size=2, seq_len=15, prompt_len=5)
    assert res.info["nfe_bound"] == len(bound) == (12 if edit is None else 18)
    if edit is None:
        assert count.widths == [8] * 4 + [12] * 4 + [16] * 4
    else:
        assert 12 < res.nfe_total <= 18


def test_llada2_calls_equal_the_hand_worked_bound_when_nothing_stops_early(models):
    """threshold > 1 forces the even quota (1 token per step for B = T' = 4), so every block
    takes exactly 4 calls over the window [0, block end): P = 4, L = 16 → blocks 1, 2, 3."""
    a = models["modernbert"]
    s = llada(temperature=1.0, threshold=1.5, eos_early_stop=False)
    res = run(s, a, 16, prompt_ids(2, 4))
    hand = [(8, 8, 8, 8)] * 4 + [(12, 12, 12, 12)] * 4 + [(16, 16, 16, 16)] * 4
    assert res.calls == hand
    assert s.expected_calls(a.config, batch_size=2, seq_len=16, prompt_len=4) == hand
    assert s.cache_kind() is None


@pytest.mark.parametrize(
    ("scheduler", "scheduler_args"),
    [
        ("EntropyBoundScheduler", {}),
        ("DiscreteDDIMScheduler", {"corrector_steps": 1}),
        ("BlockRefinementScheduler", {}),  # uniform mode (mask_token_id None)
    ],
)
def test_gemma_nfe_equals_decoder_and_encoder_forwards_counted_by_wrappers(
    models, scheduler, scheduler_args
):
    """P = 5, G = 12, C = 8: two canvases; per canvas one encoder call and 4 decoder calls
    (DiscreteDDIM's corrector sweeps are folded into the 4); records hand-worked."""
    a = models["gemma"]
    s = gemma(scheduler, scheduler_args, confidence_threshold=None, eos_early_stop=False)
    top = CountForward(a.model, "decoder_input_ids")
    enc = CountForward(a.model.model.encoder, "input_ids")
    try:
        res = run(s, a, 17, prompt_ids(2, 5))
    finally:
        top.restore()
        enc.restore()
    assert (res.nfe_denoise, res.info["encoder_calls"]) == (len(top.widths), len(enc.widths))
    assert res.nfe_total == len(top.widths) + len(enc.widths) == 10
    assert enc.widths == [5, 8] and top.widths == [8] * 8
    hand = [(5, 5, 5, 0)] + [(8, 8, 13, 8)] * 4 + [(8, 8, 13, 0)] + [(8, 8, 21, 8)] * 4
    assert res.calls == hand
    assert s.expected_calls(a.config, batch_size=2, seq_len=17, prompt_len=5) == hand
    assert res.info["generated_untrimmed"] == 16 and s.cache_kind() == "kv"


# ---- (2) tokens equal a direct call of the diffusers pipeline ---------------------------------


def test_llada2_tokens_equal_the_pipeline_called_directly(models):
    a = models["modernbert"]
    args = {**FAST, "temperature": 1.0, "sampling_method": "multinomial", "top_k": 20}
    s = sampler(call_args={**args, "eos_early_stop": False})
    prompt = prompt_ids(2, 5, seed=3)
    res = run(s, a, 15, prompt, seed=7)
    pipe = diffusers.LLaDA2Pipeline(model=a.model, scheduler=diffusers.BlockRefinementScheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        input_ids=prompt,
        gen_length=10,
        mask_token_id=H.MASK_ID,
        eos_token_id=H.EOS_ID,
        eos_early_stop=False,
        generator=torch.Generator().manual_seed(7),
        output_type="seq",
        **args,
    )
    assert torch.equal(res.tokens[:, :5], prompt)  # (4) the prompt comes back unchanged
    assert torch.equal(res.tokens[:, 5:], out.sequences)
    assert res.tokens.shape == (2, 15) and not (res.tokens == H.MASK_ID).any()


@pytest.mark.parametrize("scheduler", ["EntropyBoundScheduler", "BlockRefinementScheduler"])
def test_gemma_tokens_equal_the_pipeline_called_directly(models, scheduler):
    """G = 12 is not a multiple of C = 8: two canvases are made, the first 12 tokens kept."""
    a = models["gemma"]
    s = gemma(scheduler, temperature=1.0)
    prompt = prompt_ids(2, 5, seed=4)
    res = run(s, a, 17, prompt, seed=11)
    cls = getattr(diffusers, scheduler)
    pipe = diffusers.DiffusionGemmaPipeline(
        model=gemma_model_for_pipeline(a.model),
        scheduler=cls(),
        processor=PromptProcessor(prompt, H.EOS_ID),
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt="",
        gen_length=12,
        num_inference_steps=4,
        temperature=1.0,
        generator=torch.Generator().manual_seed(11),
        output_type="seq",
    )
    assert out.sequences.shape == (2, 16)
    assert torch.equal(res.tokens[:, :5], prompt)
    assert torch.equal(res.tokens[:, 5:], out.sequences[:, :12])


@torch.no_grad()
def test_gemma_proxy_drives_the_model_as_its_own_generate(models):
    """Through the renaming proxy the pipeline makes the model's own calls: with the global RNG
    (generator=None) seeded alike, the argmax of its last decoder logits is what
    ``model.generate`` returns (EntropyBound is the model's reference sampler)."""
    a = models["gemma"]
    prompt = prompt_ids(2, 5, seed=5)
    net = gemma_model_for_pipeline(a.model)
    assert gemma_needs_rename(a.model) == (net is not a.model)
    last = {}

    def keep(pipe, step, t, kw):
        last["logits"] = kw["logits"]
        return {}

    pipe = diffusers.DiffusionGemmaPipeline(
        model=net,
        scheduler=diffusers.EntropyBoundScheduler(),
        processor=PromptProcessor(prompt, None),
    )
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(2)
    pipe(
        prompt="",
        gen_length=H.CANVAS,
        num_inference_steps=4,
        confidence_threshold=None,
        output_type="seq",
        callback_on_step_end=keep,
        callback_on_step_end_tensor_inputs=["logits"],
    )
    torch.manual_seed(2)
    own = a.model.generate(
        prompt, max_new_tokens=H.CANVAS, max_denoising_steps=4, eos_token_id=None, pad_token_id=None
    )
    assert torch.equal(last["logits"].argmax(-1), own.sequences[:, 5:])


def test_gemma_model_is_given_as_is_when_its_calls_take_past_key_values():
    class Decoder:
        @staticmethod
        def create_diffusion_decoder_attention_mask(config, inputs_embeds, past_key_values):
            return None

    class Encoder(nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return None

    class Old(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = SimpleNamespace(encoder=Encoder(), decoder=Decoder())

        def forward(self, decoder_input_ids=None, past_key_values=None):
            return None

    old = Old()
    assert not gemma_needs_rename(old)
    assert gemma_model_for_pipeline(old) is old


# ---- (3) seeds ----------------------------------------------------------------------------------


def test_same_seed_same_tokens_other_seed_other_tokens_and_plans_replay(models):
    """The default temperature (dlmbench's 1.0, not diffusers' greedy 0.0) samples; 0.0 given
    explicitly is greedy, the same tokens for every seed."""
    a = models["modernbert"]
    s = llada(eos_early_stop=False)
    prompt = prompt_ids(2, 5, seed=6)
    first, again, other = (run(s, a, 13, prompt, seed=k) for k in (0, 0, 1))
    assert torch.equal(first.tokens, again.tokens) and first.calls == again.calls
    assert not torch.equal(first.tokens, other.tokens)
    greedy = llada(temperature=0.0, eos_early_stop=False)
    assert torch.equal(
        run(greedy, a, 13, prompt, seed=0).tokens, run(greedy, a, 13, prompt, seed=1).tokens
    )
    plan = s.plan(a, batch_size=2, seq_len=13, generator=torch.Generator(), prompt=prompt)
    r1, r2 = (s.execute(a, plan, generator=torch.Generator().manual_seed(0)) for _ in "12")
    assert torch.equal(r1.tokens, first.tokens) and torch.equal(r2.tokens, first.tokens)
    g = models["gemma"]
    s = gemma(temperature=1.0)
    one, two, three = (run(s, g, 13, prompt, seed=k) for k in (0, 0, 1))
    assert torch.equal(one.tokens, two.tokens) and not torch.equal(one.tokens, three.tokens)


# ---- unconditional runs -----------------------------------------------------------------------


def test_unconditional_llada2_generates_every_position(models):
    res = run(llada(temperature=1.0, eos_early_stop=False), models["modernbert"], 12)
    assert res.tokens.shape == (2, 12) and not (res.tokens == H.MASK_ID).any()
    assert (res.info["prompt_len"], res.info["gen_tokens"]) == (0, 12)
    assert [c[0] for c in res.calls] == [4] * 4 + [8] * 4 + [12] * 4


def test_unconditional_gemma_is_prompted_with_bos_alone(models):
    """Unconditional L = 8 equals the run prompted with [BOS] at L = 9, BOS dropped."""
    g = models["gemma"]
    s = gemma(temperature=1.0)
    free = run(s, g, 8, seed=3)
    bos = torch.full((2, 1), H.BOS_ID)
    prompted = run(s, g, 9, bos, seed=3)
    assert free.info["implicit_prompt"] == [H.BOS_ID] and free.tokens.shape == (2, 8)
    assert torch.equal(free.tokens, prompted.tokens[:, 1:])
    assert free.calls[0] == (1, 1, 1, 0)
    no_bos = SimpleNamespace(model=g.model, config=dataclasses.replace(g.config, bos_index=None))
    with pytest.raises(SamplerError, match="at least one prompt token.*no BOS id"):
        run(s, no_bos, 8)


# ---- (6) LLaDA2 on a DiT through the shim -------------------------------------------------------


def test_llada2_runs_on_a_tiny_dit_through_the_shim():
    dit = tiny_model("mdlm", seed=1)
    s = llada(temperature=1.0)
    prompt = torch.randint(0, 30, (2, 3), generator=torch.Generator().manual_seed(8))
    count = CountForward(dit, "x")
    try:
        res = run(s, dit, 14, prompt)
    finally:
        count.restore()
    mask = dit.config.mask_id
    assert res.info["model_given"] == "dit_shim"
    assert torch.equal(res.tokens[:, :3], prompt) and res.tokens.shape == (2, 14)
    assert not (res.tokens == mask).any() and res.info["masks_left"] == 0
    assert res.nfe_total == len(count.widths) and [c[0] for c in res.calls] == count.widths
    assert count.widths[0] == 4 and count.widths[-1] == 16  # windows to block ends 4 … 16


@torch.no_grad()
def test_the_dit_shim_gives_the_dit_logits_of_the_unpadded_rows():
    """A tail masked out of attention (as LLaDA2 masks positions past P + G) leaves the real
    rows' logits those of the DiT run on the real rows alone; the mask logit is −inf (SUBS)."""
    dit = tiny_model("mdlm", seed=2)
    shim = shim_classes().HFCallShim(dit, "dit")
    x = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(1))
    keep = torch.ones(2, 10, dtype=torch.long)
    keep[:, 7:] = 0
    pos = torch.arange(10).expand(2, 10)
    out = shim(x, attention_mask=keep, position_ids=pos).logits
    alone = dit(x[:, :7])
    alone[..., dit.config.mask_id] = float("-inf")
    assert_close(out[:, :7], alone)
    unmasked = shim(x, attention_mask=torch.ones_like(keep), position_ids=pos).logits
    assert not torch.allclose(unmasked[:, :7], alone, atol=1e-3)


# ---- EOS early stop -----------------------------------------------------------------------------


def test_fill_masks_after_eos_and_pad_with_on_hand_worked_rows():
    m, e = 9, 2
    seq = torch.tensor([[5, 2, 9, 9], [9, 5, 2, 9], [5, 6, 9, 9]])
    out, n = fill_masks_after_eos(seq, m, e)
    assert out.tolist() == [[5, 2, 2, 2], [9, 5, 2, 2], [5, 6, 9, 9]] and n == 3
    assert fill_masks_after_eos(seq, m, None) == (seq, 0)
    padded, n = pad_with(torch.tensor([[1, 2], [3, 4]]), 5, e)
    assert padded.tolist() == [[1, 2, 2, 2, 2], [3, 4, 2, 2, 2]] and n == 6
    with pytest.raises(SamplerError, match="fewer than the 5 asked"):
        pad_with(torch.tensor([[1, 2]]), 5, None)


class AlwaysEOS(nn.Module):
    """An HF-style model whose every row says EOS with probability ≈ 0.997."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = torch.zeros(*input_ids.shape, H.VOCAB)
        logits[..., H.EOS_ID] = 10.0
        return SimpleNamespace(logits=logits)


def test_llada2_eos_early_stop_leaves_masks_that_are_filled_with_eos():
    """P = 4, B = 4, L = 16: block [4, 8) commits EOS everywhere in one call, every row is
    finished, the pipeline stops and returns masks at [8, 16); the sampler fills 2 × 8 with EOS."""
    config = SimpleNamespace(
        family="mdlm", vocab_size=H.VOCAB, mask_id=H.MASK_ID, eos_index=H.EOS_ID, bos_index=None
    )
    model = SimpleNamespace(model=AlwaysEOS(), config=config)
    prompt = prompt_ids(2, 4)
    res = run(llada(), model, 16, prompt)
    assert res.nfe_total == 1 and res.calls == [(8, 8, 8, 8)]
    assert torch.equal(res.tokens[:, 4:], torch.full((2, 12), H.EOS_ID))
    assert (res.info["eos_filled"], res.info["masks_left"]) == (16, 0)
    pipe = diffusers.LLaDA2Pipeline(
        model=model.model, scheduler=diffusers.BlockRefinementScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    raw = pipe(input_ids=prompt, gen_length=12, mask_token_id=H.MASK_ID, eos_token_id=H.EOS_ID,
               output_type="seq", **FAST).sequences  # fmt: skip
    assert (raw[:, 4:] == H.MASK_ID).all() and (raw[:, :4] == H.EOS_ID).all()


# ---- (5) bad configs: every problem at once; runtime refusals ---------------------------------


def test_bad_names_are_listed_together_with_did_you_mean():
    cfg, probs = collect(
        DiffusersPipelineConfig, {"pipeline": "LLaDA2Pipelin", "scheduler": "EntropyBoundSchedular"}
    )
    assert cfg is not None and len(probs) == 2
    assert (
        "'pipeline' is 'LLaDA2Pipelin'" in probs[0] and "Did you mean: LLaDA2Pipeline" in probs[0]
    )
    assert "Did you mean: EntropyBoundScheduler" in probs[1]


def test_every_bad_key_and_value_is_listed_in_one_error():
    data = {
        "pipeline": "LLaDA2Pipeline",
        "scheduler": "EntropyBoundScheduler",
        "scheduler_args": {"entropy_bond": 0.1},
        "call_args": {
            "gen_length": 5,
            "generator": 1,
            "num_inference_step": 4,
            "temperature": -1.0,
            "block_length": 0,
        },
    }
    with pytest.raises(ConfigError) as err:
        from_dict(DiffusersPipelineConfig, data)
    probs = err.value.problems
    assert len(probs) == 7, probs
    text = str(err.value)
    assert "serves uniform corruption; this model uses mask corruption" in text
    assert "'entropy_bond'" in text and "Did you mean: entropy_bound" in text
    assert "'gen_length', which dlmbench sets itself from seq_len minus the prompt" in text
    assert "'generator', which dlmbench sets itself from the run's seed" in text
    assert "Did you mean: num_inference_steps" in text
    assert "'call_args.temperature' is -1.0" in text and "'call_args.block_length' is 0" in text
    with pytest.raises(ConfigError):
        DiffusersPipeline(DiffusersPipelineConfig(**data))
    assert DiffusersPipelineConfig().problems() == []


def test_missing_diffusers_is_one_sentence_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    probs = DiffusersPipelineConfig(call_args={"gen_length": 3}).problems()
    assert len(probs) == 1 and "pip install 'dlmbench[hf]'" in probs[0]


def test_runtime_refusals_say_what_to_do(models):
    with pytest.raises(SamplerError, match="family 'uniform_block'.*pipeline: DiffusionGemma"):
        run(llada(), models["gemma"], 12)
    with pytest.raises(SamplerError, match="family 'mdlm'.*pipeline: LLaDA2Pipeline"):
        run(gemma(), tiny_model("mdlm"), 12)
    with pytest.raises(SamplerError, match="needs a model of family mdlm or uniform_block"):
        run(llada(), tiny_model("ar"), 12)
    with pytest.raises(SamplerError, match="LLaDA2Pipeline refused its arguments.*threshold"):
        run(llada(threshold=-0.5), models["modernbert"], 8)
    assert not models["modernbert"].model._forward_pre_hooks  # removed despite the error
    with pytest.raises(SamplerError, match="prompt length is 8 tokens with seq_len 8"):
        run(llada(), models["modernbert"], 8, prompt_ids(2, 8))
