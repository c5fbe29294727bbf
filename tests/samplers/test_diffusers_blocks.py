"""``diffusers_blocks``: diffusers' dLLM schedulers in dlmbench's loop (issue 12, item 3a).

The oracle is diffusers itself: the same scheduler inside its own pipeline (``LLaDA2Pipeline``
for mask corruption, ``DiffusionGemmaPipeline`` for uniform corruption), on the same tiny model
and the same seed, must give the same tokens and the same number of model forwards.
"""

from __future__ import annotations

import sys

import pytest
import torch

from dlmcore.configio import collect
from samplers.base import SamplerError
from samplers.diffusers_blocks import AdaptiveStop, DiffusersBlocks, DiffusersBlocksConfig
from tests.conftest import tiny_model
from tests.samplers.fakes import FixedLogitsModel

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from harness.model.hf import tiny as H  # noqa: E402
from harness.model.hf.load import load  # noqa: E402
from samplers.diffusers_pipeline import PromptProcessor, gemma_model_for_pipeline  # noqa: E402

P = 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "modernbert": load(f"hf:{H.write_modernbert(root / 'modernbert')}"),
        "llada": load(f"hf:{H.write_llada_style(root / 'llada')}", {"trust_remote_code": True}),
        "gemma": load(f"hf:{H.write_diffusion_gemma(root / 'gemma')}"),
    }


def prompt_ids(b: int = 2, n: int = P, seed: int = 3) -> torch.Tensor:
    return torch.randint(3, 60, (b, n), generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Counter:
    """Counts forwards of a module (a pre-hook), as an independent NFE count."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        self.handle = module.register_forward_pre_hook(self.hook)

    def hook(self, *_: object) -> None:
        self.n += 1


def run_llada2_pipeline(hf_model, prompt, gen_length, seed, **kw):
    """Tokens and forwards of diffusers' LLaDA2Pipeline (eos early stop off)."""
    pipe = diffusers.LLaDA2Pipeline(
        model=hf_model, scheduler=diffusers.BlockRefinementScheduler(), tokenizer=None
    )
    pipe.set_progress_bar_config(disable=True)
    count = Counter(hf_model)
    try:
        out = pipe(
            input_ids=prompt,
            gen_length=gen_length,
            eos_early_stop=False,
            mask_token_id=H.MASK_ID,
            generator=gen(seed),
            output_type="seq",
            **kw,
        )
    finally:
        count.handle.remove()
    return out.sequences, count.n


def run_gemma_pipeline(adapter, scheduler, prompt, gen_length, seed, **kw):
    """Tokens and decoder forwards of diffusers' DiffusionGemmaPipeline (eos early stop off)."""
    model = gemma_model_for_pipeline(adapter.model)
    pipe = diffusers.DiffusionGemmaPipeline(
        model=model, scheduler=scheduler, processor=PromptProcessor(prompt, eos_token_id=None)
    )
    pipe.set_progress_bar_config(disable=True)
    count = Counter(adapter.model)
    try:
        out = pipe(
            prompt="unused",
            gen_length=gen_length,
            eos_early_stop=False,
            generator=gen(seed),
            output_type="seq",
            **kw,
        )
    finally:
        count.handle.remove()
    return out.sequences, count.n


# ---- mask corruption: the LLaDA2Pipeline loop -------------------------------------------------

MASK_CASES = [  # threshold and editing given explicitly: the two sides' defaults differ
    pytest.param({"temperature": 0.0, "threshold": 0.95}, id="greedy"),
    pytest.param({"temperature": 1.0, "threshold": 0.3}, id="sampled-threshold"),
    pytest.param({"temperature": 0.8, "threshold": 0.3, "editing_threshold": 0.5}, id="editing"),
    pytest.param({"temperature": 1.0, "threshold": 0.7, "top_k": 5, "top_p": 0.9}, id="top-k-p"),
]


@pytest.mark.parametrize("name", ["modernbert", "llada"])
@pytest.mark.parametrize("kw", MASK_CASES)
def test_mask_corruption_equals_llada2_pipeline(models, name, kw):
    adapter, prompt = models[name], prompt_ids()
    G = 19  # P + G = 24: three whole blocks of 8, the first holding the prompt's tail
    cfg = DiffusersBlocksConfig(
        block_size=8, num_inference_steps=4, suppress_mask_logit=False, **kw
    )
    res = DiffusersBlocks(cfg).sample(
        adapter, batch_size=2, seq_len=P + G, generator=gen(0), prompt=prompt
    )
    kw = {"editing_threshold": None, **kw}
    ref, forwards = run_llada2_pipeline(
        adapter.model, prompt, G, seed=0, block_length=8, num_inference_steps=4, **kw
    )
    assert torch.equal(res.tokens[:, :P], prompt)
    assert torch.equal(res.tokens[:, P:], ref)
    assert res.nfe_denoise == res.nfe_total == forwards == len(res.calls)
    assert [c[0] for c in res.calls] == sorted(c[0] for c in res.calls)  # growing windows


def test_same_seed_same_tokens_other_seed_other_tokens(models):
    cfg = DiffusersBlocksConfig(block_size=8, num_inference_steps=4, temperature=1.0)
    s = DiffusersBlocks(cfg)

    def run(seed):
        return s.sample(models["modernbert"], batch_size=2, seq_len=24, generator=gen(seed))

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first.tokens, again.tokens)
    assert not torch.equal(first.tokens, other.tokens)
    assert not (first.tokens == H.MASK_ID).any()


def test_forced_quota_makes_the_analytic_number_of_calls_on_a_dit():
    """threshold > 1 commits exactly the quota: T calls per block, = ``expected_calls``."""
    model = tiny_model("mdlm")
    s = DiffusersBlocks(
        DiffusersBlocksConfig(block_size=8, num_inference_steps=4, temperature=1.0, threshold=2.0)
    )
    prompt = torch.randint(0, model.config.mask_id, (3, 8), generator=gen(1))
    res = s.sample(model, batch_size=3, seq_len=32, generator=gen(0), prompt=prompt)
    expected = s.expected_calls(model.config, batch_size=3, seq_len=32, prompt_len=8)
    assert res.calls == expected
    assert res.nfe_denoise == 3 * 4  # three generated blocks × T
    assert res.step_sizes == [2.0] * 12  # 8 positions over 4 steps, every row
    assert torch.equal(res.tokens[:, :8], prompt)
    assert not (res.tokens == model.config.mask_id).any()


@pytest.mark.parametrize(("steps", "post"), [(1, 3), (2, 0), (2, 3), (4, 2)])
def test_editing_calls_stay_within_the_bound_which_is_reached(steps, post):
    """With editing, a block committed at once (threshold tiny) makes max_post_steps + 1 more
    calls; ``expected_calls`` bounds it, exactly when it is T + max_post_steps per block."""
    table = torch.randn(16, 12, generator=gen(0))  # flat enough that sampling keeps editing
    model = FixedLogitsModel(table, mask_index=11)
    cfg = DiffusersBlocksConfig(
        block_size=4,
        num_inference_steps=steps,
        threshold=1e-4,
        editing_threshold=1e-3,
        max_post_steps=post,
    )
    res = DiffusersBlocks(cfg).sample(model, batch_size=2, seq_len=8, generator=gen(0))
    bound = DiffusersBlocks(cfg).expected_calls(model.config, batch_size=2, seq_len=8)
    assert len(bound) == 2 * (steps + post)
    per_block = 1 + (post + 1 if steps > 1 else 0)  # one commit step, then the editing calls
    assert res.nfe_denoise == 2 * per_block <= len(bound)


def test_the_mask_token_is_never_committed_unless_asked():
    V, mask = 12, 11
    table = torch.zeros(16, V)
    table[:, mask] = 50.0  # the model "predicts" the mask token everywhere
    table[:, 3] = 5.0
    model = FixedLogitsModel(table, mask_index=mask)
    cfg = DiffusersBlocksConfig(block_size=4, num_inference_steps=2)
    res = DiffusersBlocks(cfg).sample(model, batch_size=2, seq_len=8, generator=gen(0))
    assert torch.equal(res.tokens, torch.full((2, 8), 3))
    raw = DiffusersBlocksConfig(block_size=4, num_inference_steps=2, suppress_mask_logit=False)
    res = DiffusersBlocks(raw).sample(model, batch_size=2, seq_len=8, generator=gen(0))
    assert (res.tokens == mask).all()  # the pipeline's behaviour: raw logits commit masks


# ---- uniform corruption: the DiffusionGemmaPipeline loop --------------------------------------

UNIFORM_CASES = [
    pytest.param("EntropyBoundScheduler", {}, 0.0, 0.005, id="entropy-bound"),
    pytest.param("EntropyBoundScheduler", {"entropy_bound": 2.0}, 0.0, None, id="entropy-wide"),
    pytest.param("DiscreteDDIMScheduler", {}, 1.0, None, id="ddim"),
    pytest.param("DiscreteDDIMScheduler", {"corrector_steps": 1}, 1.0, 0.005, id="ddim-corr"),
    pytest.param("BlockRefinementScheduler", {}, 0.7, None, id="block-refinement"),
]


@pytest.mark.parametrize(("name", "args", "temperature", "conf"), UNIFORM_CASES)
def test_uniform_corruption_equals_diffusion_gemma_pipeline(models, name, args, temperature, conf):
    adapter, prompt, C = models["gemma"], prompt_ids(), H.CANVAS
    cfg = DiffusersBlocksConfig(
        scheduler=name,
        scheduler_args=args,
        block_size=None,
        num_inference_steps=5,
        temperature=temperature,
        confidence_threshold=conf,
    )
    res = DiffusersBlocks(cfg).sample(
        adapter, batch_size=2, seq_len=P + 2 * C, generator=gen(0), prompt=prompt
    )
    ref, forwards = run_gemma_pipeline(
        adapter,
        getattr(diffusers, name)(**args),
        prompt,
        2 * C,
        seed=0,
        num_inference_steps=5,
        temperature=temperature,
        confidence_threshold=conf,
    )
    assert torch.equal(res.tokens[:, :P], prompt)
    assert torch.equal(res.tokens[:, P:], ref)
    assert res.nfe_denoise == forwards == 2 * 5  # two canvases × the step budget
    assert res.nfe_total == forwards + 2  # + the prompt and the first canvas encoded
    bound = DiffusersBlocks(cfg).expected_calls(
        adapter.config, batch_size=2, seq_len=P + 2 * C, prompt_len=P
    )
    assert res.calls == bound  # nothing stopped early on a random model


def test_uniform_corruption_without_a_prompt_starts_from_bos_and_trims(models):
    adapter, C = models["gemma"], H.CANVAS
    cfg = DiffusersBlocksConfig(
        scheduler="EntropyBoundScheduler", block_size=None, num_inference_steps=2
    )
    res = DiffusersBlocks(cfg).sample(adapter, batch_size=2, seq_len=2 * C, generator=gen(0))
    assert res.tokens.shape == (2, 2 * C)
    assert (res.tokens[:, 0] == adapter.config.bos_index).all()
    assert res.info["prompt_len"] == 1 and res.info["gen_tokens"] == 2 * C - 1
    assert res.nfe_denoise == 2 * 2  # ⌈(2C − 1)/C⌉ = 2 canvases, the last one trimmed by 1


def test_adaptive_stop_freezes_a_row_once_stable_and_confident():
    canvas = torch.tensor([[1, 2], [3, 4]])
    stop = AdaptiveStop(b=2, C=2, stability=1, threshold=0.1, canvas=canvas)
    sure = torch.full((2, 2, 5), -30.0)
    sure[:, :, 2] = 30.0  # row 0: certain of token 2 everywhere
    logits = torch.stack([sure[0], torch.zeros(2, 5)])  # row 1: uniform, entropy log 5
    first = stop.update(canvas, logits)  # nothing was stable before the first call
    assert torch.equal(first, canvas) and not stop.done.any()
    second = stop.update(canvas, logits)
    assert stop.done.tolist() == [True, False]
    assert torch.equal(second, torch.tensor([[2, 2], [3, 4]]))
    assert not stop.all_done()


# ---- bad input -------------------------------------------------------------------------------


def test_config_problems_are_reported_together():
    cfg, problems = collect(
        DiffusersBlocksConfig,
        {
            "scheduler": "EntropyBoundSchedular",
            "num_inference_steps": 0,
            "temperature": -1.0,
            "top_p": 1.5,
        },
    )
    assert cfg is not None or problems
    text = " ".join(problems)
    assert "Did you mean: EntropyBoundScheduler" in text
    assert "'num_inference_steps' is 0" in text
    assert "'temperature' is -1.0" in text
    assert "'top_p' is 1.5" in text


def test_unknown_scheduler_args_are_named_with_the_allowed_ones():
    _, problems = collect(
        DiffusersBlocksConfig,
        {"scheduler": "EntropyBoundScheduler", "scheduler_args": {"entropy_bnd": 0.2}},
    )
    assert len(problems) == 1
    assert "entropy_bnd" in problems[0] and "Did you mean: entropy_bound" in problems[0]


def test_a_uniform_scheduler_on_a_mask_model_is_refused(models):
    s = DiffusersBlocks(DiffusersBlocksConfig(scheduler="DiscreteDDIMScheduler"))
    with pytest.raises(SamplerError, match="serves uniform corruption; this model uses mask"):
        s.sample(models["modernbert"], batch_size=1, seq_len=32, generator=gen(0))


def test_a_block_size_other_than_the_canvas_is_refused(models):
    s = DiffusersBlocks(DiffusersBlocksConfig(scheduler="EntropyBoundScheduler", block_size=4))
    with pytest.raises(SamplerError, match="block_size: null"):
        s.sample(models["gemma"], batch_size=1, seq_len=17, generator=gen(0))


def test_missing_diffusers_is_one_sentence_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers → ImportError
    _, problems = collect(DiffusersBlocksConfig, {"scheduler": "EntropyBoundScheduler"})
    assert len(problems) == 1
    assert "pip install 'dlmbench[hf]'" in problems[0]
