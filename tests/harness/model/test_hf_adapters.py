"""HF adapters (``harness.model.hf``) against their oracles: each model's own forward.

Tiny random models are written to local directories (``harness/model/hf/tiny.py``): ModernBERT
MaskedLM, a LLaDA-style and a Dream-style remote-code directory, and DiffusionGemma from a tiny
``DiffusionGemmaConfig``. Each loads through its adapter and must give the logits its own
forward gives (``assert_close``, fp32); padded rows must give the logits they give alone; the
Dream shift is checked on hand-worked indices; DiffusionGemma's cached path reproduces the
model's own ``generate``; the ``mdlm`` sampler runs end to end on the ModernBERT adapter; and
every refusal (remote code without opt-in, Hub ids, missing files) says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

from dlmcore.configio import ConfigError
from harness.model import modelspec
from harness.model.hf import tiny as H
from harness.model.hf.adapters import (
    ADAPTERS,
    DiffusionGemmaAdapter,
    MaskedLMAdapter,
    RemoteCodeAdapter,
    positions_from_mask,
    unshift_logits,
)
from harness.model.hf.config import problems_of, read_config
from harness.model.hf.load import load, load_adapter
from harness.model.hf.spec import HFModelError, parse_spec
from samplers.mdlm_ancestral import MDLMAncestral, MDLMConfig

ROOT = Path(__file__).resolve().parents[3]
TRUST = {"trust_remote_code": True}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "modernbert": H.write_modernbert(root / "modernbert"),
        "bert": H.write_bert(root / "bert"),
        "llada": H.write_llada_style(root / "llada"),
        "dream": H.write_dream_style(root / "dream"),
        "gemma": H.write_diffusion_gemma(root / "gemma"),
    }


@pytest.fixture(scope="module")
def adapters(dirs):
    return {
        "modernbert": load(f"hf:{dirs['modernbert']}"),
        "bert": load(f"hf:{dirs['bert']}"),
        "llada": load(f"hf:{dirs['llada']}", TRUST),
        "dream": load(f"hf:{dirs['dream']}", TRUST),
        "gemma": load(f"hf:{dirs['gemma']}"),
    }


def ids(b: int, n: int, seed: int) -> torch.Tensor:
    """Random ordinary tokens (no specials, no mask): ids 3 … 59."""
    return torch.randint(3, 60, (b, n), generator=torch.Generator().manual_seed(seed))


# ---- logits equal the model's own forward ---------------------------------------------------


@torch.no_grad()
def test_modernbert_logits_equal_its_own_forward(dirs, adapters):
    from transformers import AutoModelForMaskedLM

    own = AutoModelForMaskedLM.from_pretrained(dirs["modernbert"], local_files_only=True).eval()
    x = ids(3, 20, 0)
    a = adapters["modernbert"]
    assert isinstance(a, MaskedLMAdapter)
    assert_close(a(x), own(input_ids=x).logits)
    assert_close(a(x, logits=4), own(input_ids=x).logits[:, -4:])


@torch.no_grad()
def test_llada_style_logits_equal_its_own_forward(dirs, adapters):
    from transformers import AutoModel

    own = AutoModel.from_pretrained(dirs["llada"], trust_remote_code=True, local_files_only=True)
    x = ids(2, 17, 1)
    a = adapters["llada"]
    assert isinstance(a, RemoteCodeAdapter) and not a.config.logits_shift
    assert_close(a(x), own.eval()(input_ids=x).logits)


@torch.no_grad()
def test_dream_style_logits_are_its_own_forward_unshifted(dirs, adapters):
    """Row i of the adapter = the model's row i − 1 (row 0 keeps its own), Dream's convention."""
    from transformers import AutoModel

    own = AutoModel.from_pretrained(dirs["dream"], trust_remote_code=True, local_files_only=True)
    x = ids(2, 15, 2)
    raw = own.eval()(input_ids=x).logits
    out = adapters["dream"](x)
    assert adapters["dream"].config.logits_shift
    assert_close(out[:, 1:], raw[:, :-1])
    assert_close(out[:, 0], raw[:, 0])
    assert not torch.allclose(out, raw)  # the shift is not a no-op on these weights


@torch.no_grad()
def test_diffusion_gemma_canvas_logits_equal_its_own_forward(dirs, adapters):
    from transformers import DiffusionGemmaForBlockDiffusion

    own = DiffusionGemmaForBlockDiffusion.from_pretrained(dirs["gemma"], local_files_only=True)
    x = ids(2, 6 + H.CANVAS, 3)
    a = adapters["gemma"]
    assert isinstance(a, DiffusionGemmaAdapter)
    expected = own.eval()(input_ids=x[:, :6], decoder_input_ids=x[:, 6:]).logits
    assert_close(a(x), expected)
    assert a(x).shape == (2, H.CANVAS, H.VOCAB)


# ---- padding ---------------------------------------------------------------------------------


def padded(row: torch.Tensor, width: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) row → (width,) row padded with PAD on ``side`` and its (width,) bool real-mask."""
    pad = torch.full((width - row.numel(),), H.PAD_ID, dtype=row.dtype)
    real = torch.ones(row.numel(), dtype=torch.bool)
    gap = torch.zeros(pad.numel(), dtype=torch.bool)
    if side == "left":
        return torch.cat([pad, row]), torch.cat([gap, real])
    return torch.cat([row, pad]), torch.cat([real, gap])


@pytest.mark.parametrize("name", ["modernbert", "bert", "llada", "dream"])
@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_rows_give_their_unpadded_logits(adapters, name, side):
    """A short row padded into a batch with a full row: its real positions' logits equal the
    row run alone; the full row's equal it run alone; without the mask they would not."""
    a = adapters[name]
    short, full = ids(1, 9, 4)[0], ids(1, 14, 5)[0]
    row, real = padded(short, 14, side)  # BERT's absolute positions need the position ids
    x = torch.stack([row, full])
    mask = torch.stack([real, torch.ones(14, dtype=torch.bool)])
    out = a(x, attn_mask=mask)
    assert_close(out[0][real], a(short[None])[0])
    assert_close(out[1], a(full[None])[0])
    assert not torch.allclose(a(x)[0][real], a(short[None])[0], atol=1e-3)


@torch.no_grad()
def test_diffusion_gemma_left_padded_prompt_gives_its_unpadded_canvas_logits(adapters):
    a = adapters["gemma"]
    short, full = ids(1, 3, 6)[0], ids(1, 6, 7)[0]
    canvas = ids(2, H.CANVAS, 8)
    row, real = padded(short, 6, "left")
    x = torch.cat([torch.stack([row, full]), canvas], dim=1)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, :6] = real
    out = a(x, attn_mask=mask)
    alone = a(torch.cat([short, canvas[0]])[None])[0]
    assert_close(out[0], alone)
    assert_close(out[1], a(x[1:])[0])
    assert not torch.allclose(a(x)[0], alone, atol=1e-3)


# ---- the Dream shift on hand-worked indices -------------------------------------------------


def test_unshift_maps_each_position_to_the_last_real_one_before_it():
    raw = torch.arange(6, dtype=torch.float32)[None, :, None].expand(3, 6, 2)  # value = position
    mask = torch.tensor(
        [
            [True, True, True, True, True, True],  # no padding: 0 0 1 2 3 4
            [False, False, True, True, True, True],  # left: first real (2) keeps its own
            [True, True, True, True, False, False],  # right: pads repeat the last real
        ]
    )
    expect = torch.tensor([[0, 0, 1, 2, 3, 4], [0, 1, 2, 2, 3, 4], [0, 0, 1, 2, 3, 3]]).float()
    assert torch.equal(unshift_logits(raw, mask)[..., 0], expect)
    assert torch.equal(unshift_logits(raw)[..., 0], expect[:1].expand(3, 6))
    assert torch.equal(positions_from_mask(mask[1:2]), torch.tensor([[0, 0, 0, 1, 2, 3]]))


# ---- DiffusionGemma: cached path and its own generate ----------------------------------------


@torch.no_grad()
def test_diffusion_gemma_cached_calls_equal_the_uncached_one(adapters):
    """encode(prefix) once, then denoise(canvas) — also self-conditioned — as the model does."""
    a = adapters["gemma"]
    x = ids(2, 5 + H.CANVAS, 9)
    cache = a.encode(x[:, :5])
    first = a.denoise(x[:, 5:], cache)
    assert_close(first, a(x))
    again = a.denoise(x[:, 5:], cache, self_conditioning_logits=first)
    own = a.model(input_ids=x[:, :5], decoder_input_ids=x[:, 5:], self_conditioning_logits=first)
    assert_close(again, own.logits)
    assert not torch.allclose(again, first, atol=1e-3)
    assert_close(a.denoise(x[:, 5:], cache), first)  # the decoder left the cache as it was


def entropy_bound_canvas(a, prompt: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """One canvas by DiffusionGemma's reference sampler, driven through the adapter.

    Uniform start; per step (counting down N … 1): logits / linear temperature, a categorical
    draw, accept the lowest-entropy positions with Σ entropy − max entropy ≤ 0.1, renoise the
    rest uniformly; self-condition on the tempered logits; output the last argmax.
    """
    t_min, t_max, bound, V = 0.4, 0.8, 0.1, a.config.vocab_size
    torch.manual_seed(seed)
    b, C = prompt.shape[0], a.config.block_size
    cache = a.encode(prompt)
    canvas = torch.randint(0, V, (b, C))
    cond, argmax = None, canvas
    for step in reversed(range(1, steps + 1)):
        temp = t_min + (t_max - t_min) * (torch.tensor(step, dtype=torch.int32) / steps)
        logits = a.denoise(canvas, cache, self_conditioning_logits=cond) / temp
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        draw = torch.multinomial(probs.view(-1, V), 1).view(b, C)
        argmax = logits.argmax(-1)
        ent = torch.distributions.Categorical(logits=logits).entropy()
        sorted_ent, order = ent.sort(dim=-1)
        keep_sorted = sorted_ent.cumsum(-1) - sorted_ent <= bound
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        accepted = torch.where(keep, draw, canvas)
        canvas = torch.where(~keep, torch.randint(0, V, (b, C)), accepted)
        cond = logits
    return argmax


@torch.no_grad()
def test_diffusion_gemma_adapter_loop_reproduces_its_own_generate(adapters):
    a = adapters["gemma"]
    prompt = ids(2, 5, 10)
    for seed in (0, 1):
        torch.manual_seed(seed)
        out = a.model.generate(
            prompt,
            max_new_tokens=H.CANVAS,
            max_denoising_steps=4,
            eos_token_id=None,
            pad_token_id=None,
        )
        mine = entropy_bound_canvas(a, prompt, steps=4, seed=seed)
        assert torch.equal(out.sequences[:, :5], prompt)
        assert torch.equal(out.sequences[:, 5:], mine), seed


# ---- a dlmbench sampler on an adapter ---------------------------------------------------------


def test_mdlm_sampler_runs_on_the_modernbert_adapter(adapters):
    a = adapters["modernbert"]
    sampler = MDLMAncestral(MDLMConfig(num_steps=8))

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return sampler.sample(a, batch_size=2, seq_len=12, generator=gen)

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first.tokens, again.tokens)
    assert first.nfe_denoise == again.nfe_denoise >= 1
    assert not torch.equal(first.tokens, other.tokens)
    assert first.tokens.shape == (2, 12)
    assert not (first.tokens == H.MASK_ID).any()
    assert int(first.tokens.min()) >= 0 and int(first.tokens.max()) < H.VOCAB


# ---- configs read from the JSON files ---------------------------------------------------------


def test_configs_come_from_config_json_and_the_tokenizer(dirs, adapters):
    mb = read_config(parse_spec(f"hf:{dirs['modernbert']}"))
    assert (mb.family, mb.kind, mb.vocab_size, mb.mask_id) == ("mdlm", "masked_lm", 64, 63)
    assert (mb.bos_index, mb.eos_index, mb.model_length) == (1, 2, 128)  # mask from tokenizer
    assert mb == adapters["modernbert"].config
    weights = (dirs["modernbert"] / "model.safetensors").stat().st_size
    assert mb.weight_bytes == weights > 0
    ll = read_config(parse_spec(f"hf:{dirs['llada']}", TRUST))
    assert (ll.kind, ll.mask_id, ll.logits_shift, ll.attention_mask) == (
        "remote_code",
        63,
        False,
        "2d",
    )
    dr = adapters["dream"].config
    assert (dr.logits_shift, dr.attention_mask, dr.model_length) == (True, "4d", 128)
    dg = adapters["gemma"].config
    assert (dg.family, dg.mask_id, dg.block_size, dg.vocab_size) == ("uniform_block", None, 8, 64)
    assert sorted(ADAPTERS.names()) == ["diffusion_gemma", "masked_lm", "remote_code"]
    over = read_config(
        parse_spec(f"hf:{dirs['llada']}", {**TRUST, "mask_id": 5, "logits_shift": True})
    )
    assert (over.mask_id, over.logits_shift) == (5, True)


def test_modelspec_routes_hf_specs(dirs):
    path = f"hf:{dirs['modernbert']}"
    cfg = modelspec.peek_config(path)
    model, prov = modelspec.load_model(path, cfg, 0, "cpu")
    assert isinstance(model, MaskedLMAdapter) and model.config == cfg
    assert prov["source"] == path and prov["format"] == "hf-masked_lm"
    assert modelspec.size_name(cfg) == "hf-modernbert-d32xN2"
    assert modelspec.hf_problems(path) == []
    with pytest.raises(HFModelError, match="needs the HFModelConfig"):
        modelspec.load_model(path, read_config(parse_spec(f"hf:{dirs['gemma']}")), 0, "cpu")


def test_checking_a_spec_imports_neither_torch_nor_transformers(dirs):
    code = (
        "import sys\n"
        "from harness.model import modelspec\n"
        f"p = modelspec.hf_problems('hf:{dirs['llada']}')\n"
        "assert len(p) == 1 and 'trust_remote_code: true' in p[0], p\n"
        f"modelspec.hf_config('hf:{dirs['modernbert']}')\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- refusals with what to do -------------------------------------------------------------------


def test_remote_code_is_refused_without_the_opt_in(dirs, adapters):
    d = dirs["llada"]
    with pytest.raises(ConfigError) as e:
        read_config(parse_spec(f"hf:{d}"))
    msg = str(e.value)
    assert str(d) in msg and "ships its own modeling code" in msg
    assert "modeling_tinydlm.py" in msg and "trust_remote_code: true" in msg
    cfg = adapters["llada"].config
    untrusted = dataclasses.replace(
        cfg,
        spec=dataclasses.replace(
            cfg.spec, options=dataclasses.replace(cfg.spec.options, trust_remote_code=False)
        ),
    )
    with pytest.raises(HFModelError, match="trust_remote_code: true"):
        load_adapter(untrusted)


def test_hub_ids_and_files_are_refused_with_the_download_command(tmp_path):
    (msg,) = problems_of("hf:GSAI-ML/LLaDA-8B-Instruct")
    assert "looks like a Hub id" in msg
    assert "huggingface-cli download GSAI-ML/LLaDA-8B-Instruct --local-dir <dir>" in msg
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    (msg,) = problems_of(f"hf:{f}")
    assert "is a file" in msg and "local directory" in msg
    (msg,) = problems_of(f"hf:{tmp_path / 'absent'}", {"hub_id": "Dream-org/Dream-v0-Instruct-7B"})
    assert (
        f"huggingface-cli download Dream-org/Dream-v0-Instruct-7B --local-dir {tmp_path / 'absent'}"
        in msg
    )


def test_missing_files_are_named(dirs, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    no_config, no_weights = problems_of(f"hf:{d}")
    assert "config.json is missing" in no_config and "no weights" in no_weights
    shutil.copy(dirs["modernbert"] / "config.json", d)
    (msg,) = problems_of(f"hf:{d}", {"hub_id": "dllm-hub/ModernBERT-large-chat-v0.1"})
    assert "no weights" in msg and "model.safetensors" in msg and "dllm-hub/ModernBERT" in msg
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / "model-00001-of-00002.safetensors").write_bytes(b"")
    (msg,) = problems_of(f"hf:{d}", {"mask_id": 63})
    assert "1 of the 2 weight shards" in msg and "model-00002-of-00002.safetensors" in msg
    (d / "model-00002-of-00002.safetensors").write_bytes(b"")
    (msg,) = problems_of(f"hf:{d}")  # no tokenizer here, no mask_token_id in config.json
    assert "no mask token" in msg and "hf.mask_id" in msg
    assert problems_of(f"hf:{d}", {"mask_id": 63}) == []


def test_remote_code_outside_the_directory_is_refused(dirs, tmp_path):
    d = tmp_path / "r"
    shutil.copytree(dirs["llada"], d)
    doc = json.loads((d / "config.json").read_text())
    doc["auto_map"]["AutoModel"] = "someone/else--modeling_x.Model"
    (d / "config.json").write_text(json.dumps(doc))
    (d / "configuration_tinydlm.py").unlink()
    msgs = problems_of(f"hf:{d}", TRUST)
    assert any("another repository" in m and "someone/else--modeling_x.Model" in m for m in msgs)
    assert any("configuration_tinydlm.py, which is not in the directory" in m for m in msgs)


def test_bad_options_are_reported_together():
    msgs = problems_of("hf:/x", {"trust_remote_cod": True, "dtype": "fp8", "kind": "llada"})
    text = "\n".join(msgs)
    assert "Did you mean: trust_remote_code?" in text
    assert "'hf.dtype' is 'fp8'" in text and "'hf.kind' is 'llada'" in text
    assert "hf.mask_id" in problems_of("hf:/x", {"mask_id": -1})[0]


@torch.no_grad()
def test_calls_outside_the_protocol_are_refused(adapters):
    a, x = adapters["modernbert"], ids(1, 6, 11)
    with pytest.raises(HFModelError, match="is_causal"):
        a(x, is_causal=True)
    with pytest.raises(HFModelError, match="sigma"):
        a(x, sigma=torch.zeros(1))
    with pytest.raises(HFModelError, match=r"\(b, n\) key-padding mask"):
        a(x, attn_mask=torch.ones(1, 1, 6, 6, dtype=torch.bool))
    with pytest.raises(HFModelError, match="at least one prefix token"):
        adapters["gemma"](ids(1, H.CANVAS, 12))


# ---- the shipped GPU configs ------------------------------------------------------------------


HF_CONFIGS = sorted((ROOT / "configs" / "hf").glob("*.yaml"))


def test_there_is_a_config_per_model_family():
    names = {p.stem for p in HF_CONFIGS}
    assert {"llada_8b_instruct", "dream_v0_instruct_7b", "llada2_1_mini"} <= names
    assert {"diffusiongemma_26b_a4b_it", "modernbert_large_chat"} <= names


@pytest.mark.parametrize("path", HF_CONFIGS, ids=lambda p: p.stem)
def test_gpu_configs_parse_and_name_what_is_missing(path):
    text = path.read_text()
    assert text.startswith("# Command:")
    doc = yaml.safe_load(text)
    (ck,) = doc["checkpoints"].values()
    spec = parse_spec(ck["path"], ck.get("hf"))
    hub = spec.options.hub_id
    assert hub and f"huggingface-cli download {hub}" in text
    msgs = problems_of(ck["path"], ck.get("hf"))
    if not Path(spec.directory).exists():  # the usual case here: no weights on this machine
        (msg,) = msgs
        assert f"huggingface-cli download {hub} --local-dir {spec.directory}" in msg
