"""Block-causal attention for HF mask models (``hf.block_causal``; LLaDA2.x, issue 12 item 1).

The oracle is the model's own forward called the way LLaDA2's ``generate`` calls it: positions
0 … n−1 and the mask built here independently, ``tril(ones(blocks, blocks))`` expanded to tokens
by ``repeat_interleave``, then ``.log()`` (0 allowed, −inf elsewhere). On the tiny LLaDA2-style
model (``harness/model/hf/tiny.py``, which refuses any mask but a (b, 1, n, n) float one) the
adapter must reproduce it; later blocks must not reach earlier ones (and do without the option);
padded rows keep their unpadded logits; bad options come back in one error; and LLaDA2's loop
(diffusers' ``LLaDA2Pipeline`` on the own model with that mask) is what both entries of
``configs/hf/llada2_1_mini.yaml`` run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

from dlmcore.configio import ConfigError
from harness import cli
from harness.model.hf import tiny as H
from harness.model.hf.adapters import (
    additive_mask,
    allowed_keys,
    positions_from_mask,
    unshift_logits,
)
from harness.model.hf.config import problems_of, read_config
from harness.model.hf.load import load
from harness.model.hf.spec import parse_spec

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "hf" / "llada2_1_mini.yaml"
TRUST = {"trust_remote_code": True}
B = 4  # block length of the tests (LLaDA2: 32)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfblock")
    return {
        "llada2": H.write_llada2_style(root / "llada2"),
        "llada": H.write_llada_style(root / "llada"),
        "dream": H.write_dream_style(root / "dream"),
        "root": root,
    }


@pytest.fixture(scope="module")
def models(dirs):
    return {
        "block": load(f"hf:{dirs['llada2']}", {**TRUST, "block_causal": B}),
        "bidir": load(f"hf:{dirs['llada2']}", TRUST),
        "dream_block": load(f"hf:{dirs['dream']}", {**TRUST, "block_causal": B}),
    }


@pytest.fixture(scope="module")
def own(dirs):
    """The LLaDA2-style model itself, outside dlmbench."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(
        dirs["llada2"], trust_remote_code=True, local_files_only=True
    ).eval()


def ids(b: int, n: int, seed: int) -> torch.Tensor:
    """Random ordinary tokens (no specials, no mask): ids 3 … 59."""
    return torch.randint(3, 60, (b, n), generator=torch.Generator().manual_seed(seed))


def reference_mask(n: int, block: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """LLaDA2 ``generate``'s mask for the first n positions: (1, 1, n, n), 0 or −inf."""
    nb = -(-n // block)
    tril = torch.tril(torch.ones(nb, nb))
    full = tril.repeat_interleave(block, dim=0).repeat_interleave(block, dim=1)
    return full[None, None, :n, :n].log().to(dtype)


# ---- (a) the adapter equals the model called with LLaDA2's own mask -------------------------


@pytest.mark.parametrize("n", [4, 13, 16])
@torch.no_grad()
def test_block_causal_logits_equal_the_model_called_with_llada2s_mask(models, own, n):
    a = models["block"]
    assert (a.config.attention_mask, a.config.block_causal) == ("4d_additive", B)
    x = ids(2, n, n)
    ref = own(
        input_ids=x,
        attention_mask=reference_mask(n, B).expand(2, 1, n, n),
        position_ids=torch.arange(n).expand(2, n),
    ).logits
    assert_close(a(x), ref)
    assert_close(a(x, logits=B), ref[:, -B:])  # the head on the last block, as samplers ask
    if n > B:  # the mask is not a no-op: the model's bidirectional logits differ
        assert not torch.allclose(own(input_ids=x).logits, ref, atol=1e-3)


@torch.no_grad()
def test_a_boolean_4d_model_gets_the_same_pattern(dirs, models):
    """Dream-style (boolean 4-D mask, shifted logits): the mask is LLaDA2's, as booleans."""
    from transformers import AutoModel

    dream = AutoModel.from_pretrained(dirs["dream"], trust_remote_code=True, local_files_only=True)
    x, n = ids(2, 11, 7), 11
    allowed = (reference_mask(n, B) == 0).expand(2, 1, n, n)
    raw = dream.eval()(input_ids=x, attention_mask=allowed, position_ids=torch.arange(n)[None])
    assert models["dream_block"].config.attention_mask == "4d"
    assert_close(models["dream_block"](x), unshift_logits(raw.logits))


def test_the_mask_on_a_hand_worked_left_padded_row():
    """n = 5, B = 2, one pad on the left: positions 0 0 1 2 3 → blocks 0 0 0 1 1."""
    real = torch.tensor([[False, True, True, True, True]])
    blocks = positions_from_mask(real) // 2
    assert blocks.tolist() == [[0, 0, 0, 1, 1]]
    hand = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # the pad query (block 0): block 0's real keys and itself
            [0, 1, 1, 0, 0],  # block 0: the real keys of block 0
            [0, 1, 1, 0, 0],
            [0, 1, 1, 1, 1],  # block 1: blocks 0 and 1
            [0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    got = allowed_keys(real, blocks)
    assert got.shape == (1, 1, 5, 5) and torch.equal(got[0, 0], hand)
    add = additive_mask(got, torch.bfloat16)
    assert add.dtype == torch.bfloat16
    assert (add[0, 0][hand] == 0).all() and (add[0, 0][~hand] == float("-inf")).all()
    assert torch.equal(
        allowed_keys(None, torch.tensor([[0, 0, 1]])),
        torch.tensor([[[[True, True, False], [True, True, False], [True, True, True]]]]),
    )


# ---- (b) later blocks never reach earlier ones ----------------------------------------------


@torch.no_grad()
def test_changing_later_blocks_leaves_earlier_blocks_logits_unchanged(models):
    """Blocks 0 … j keep their logits when blocks j+1 … change; without the option they move.
    Within a block and from earlier blocks, changes do reach (bidirectional inside, causal
    across)."""
    n, j = 16, 1
    end = (j + 1) * B
    x = ids(1, n, 11)
    later = x.clone()
    later[:, end:] = ids(1, n - end, 12)
    same_block = x.clone()
    same_block[:, end - 1] = (x[:, end - 1] + 1 - 3) % 57 + 3  # the last token of block j
    earlier = x.clone()
    earlier[:, 0] = (x[:, 0] + 1 - 3) % 57 + 3
    blk, bidir = models["block"], models["bidir"]
    assert not torch.equal(x, later)
    assert_close(blk(later)[:, :end], blk(x)[:, :end])
    assert not torch.allclose(blk(later)[:, end:], blk(x)[:, end:], atol=1e-3)
    assert not torch.allclose(bidir(later)[:, :end], bidir(x)[:, :end], atol=1e-3)  # control
    first_of_j = slice(end - B, end - B + 1)
    assert not torch.allclose(blk(same_block)[:, first_of_j], blk(x)[:, first_of_j], atol=1e-3)
    assert not torch.allclose(blk(earlier)[:, end:], blk(x)[:, end:], atol=1e-3)


# ---- (c) padding ----------------------------------------------------------------------------


def padded(row: torch.Tensor, width: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) row → (width,) row padded with PAD on ``side`` and its (width,) bool real-mask."""
    pad = torch.full((width - row.numel(),), H.PAD_ID, dtype=row.dtype)
    real = torch.ones(row.numel(), dtype=torch.bool)
    gap = torch.zeros(pad.numel(), dtype=torch.bool)
    if side == "left":
        return torch.cat([pad, row]), torch.cat([gap, real])
    return torch.cat([row, pad]), torch.cat([real, gap])


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_rows_give_their_unpadded_logits_under_block_causality(models, side):
    """A 9-token row padded to 14 beside a full row: at its real positions it gives its logits
    alone (blocks counted from its first real token); the full row gives its own."""
    a = models["block"]
    short, full = ids(1, 9, 4)[0], ids(1, 14, 5)[0]
    row, real = padded(short, 14, side)
    x = torch.stack([row, full])
    mask = torch.stack([real, torch.ones(14, dtype=torch.bool)])
    out = a(x, attn_mask=mask)
    assert torch.isfinite(out).all()
    assert_close(out[0][real], a(short[None])[0])
    assert_close(out[1], a(full[None])[0])
    assert not torch.allclose(a(x)[0][real], a(short[None])[0], atol=1e-3)  # control: no mask


@torch.no_grad()
def test_left_padding_counts_blocks_from_the_first_real_token(models):
    """Blocks counted from the padded tensor's position 0 (5 pads, not a multiple of B) would
    shift the block edges: those logits differ from the row's own."""
    a = models["block"]
    short = ids(1, 9, 4)[0]
    row, real = padded(short, 14, "left")
    mine = a(row[None], attn_mask=real[None])[0][real]
    absolute = a(row[None], positions=torch.arange(14), attn_mask=real[None])[0][real]
    assert_close(mine, a(short[None])[0])
    assert not torch.allclose(absolute, mine, atol=1e-3)


@torch.no_grad()
def test_an_all_padding_row_stays_finite(models):
    x = ids(2, 8, 9)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0] = False
    out = models["block"](x, attn_mask=mask)
    assert torch.isfinite(out).all()
    assert_close(out[1], models["block"](x[1:])[0])


# ---- (d) options ------------------------------------------------------------------------------


def test_bad_block_causal_values_come_with_every_other_problem():
    msgs = problems_of(
        "hf:/x", {"block_causal": 0, "dtype": "fp8", "atention_mask": "4d", "mask_id": -1}
    )
    text = "\n".join(msgs)
    assert "Did you mean: attention_mask" in text and "'hf.dtype' is 'fp8'" in text
    msgs = problems_of("hf:/x", {"block_causal": 0, "mask_id": -1, "hub_id": "no"})
    assert len(msgs) == 3
    assert any("'hf.block_causal' is 0; it must be a block length >= 1" in m for m in msgs)
    with pytest.raises(ConfigError) as e:  # one error: the typo, the id and the block length
        parse_spec("hf:/x", {"block_causl": 32, "mask_id": -1, "block_causal": -2})
    text = str(e.value)
    assert "Did you mean: block_causal?" in text and "'hf.mask_id' is -1" in text
    assert "'hf.block_causal' is -2" in text
    with pytest.raises(ConfigError) as e:
        parse_spec("hf:/x", {"attention_mask": "4D", "kind": "gemma"})
    assert "'hf.attention_mask' is '4D'" in str(e.value) and "'4d_additive'" in str(e.value)
    assert "'hf.kind' is 'gemma'" in str(e.value)
    assert "'hf.block_causal' is 2.5" in problems_of("hf:/x", {"block_causal": 2.5})[0]
    assert "expected int | null" in problems_of("hf:/x", {"block_causal": True})[0]


def test_block_causal_needs_a_4d_mask_and_a_mask_kind():
    (msg,) = problems_of("hf:/x", {"block_causal": 32, "attention_mask": "2d"})
    assert "a (b, n) mask cannot say which blocks" in msg and "'4d_additive'" in msg
    (msg,) = problems_of("hf:/x", {"block_causal": 32, "kind": "diffusion_gemma"})
    assert "block_causal applies to masked_lm and remote_code" in msg


def test_the_resolved_model_type_decides(dirs, tmp_path):
    """auto → 4d_additive for llada2_moe; a (b, n)-mask model type or DiffusionGemma refuse."""
    cfg = read_config(parse_spec(f"hf:{dirs['llada2']}", {**TRUST, "block_causal": 32}))
    assert (cfg.model_type, cfg.attention_mask, cfg.block_causal) == (
        "llada2_moe",
        "4d_additive",
        32,
    )
    assert read_config(parse_spec(f"hf:{dirs['llada2']}", TRUST)).block_causal is None
    (msg,) = problems_of(f"hf:{dirs['llada']}", {**TRUST, "block_causal": 32})
    assert "model_type 'tinydlm' takes a (b, n) attention_mask" in msg
    assert "hf.attention_mask" in msg
    assert (
        problems_of(f"hf:{dirs['llada']}", {**TRUST, "block_causal": 32, "attention_mask": "4d"})
        == []
    )
    gemma = tmp_path / "gemma"
    gemma.mkdir()
    (gemma / "config.json").write_text(
        '{"model_type": "diffusion_gemma", "text_config": {"vocab_size": 64}}'
    )
    (gemma / "model.safetensors").write_bytes(b"")
    (msg,) = problems_of(f"hf:{gemma}", {"block_causal": 32})
    assert "this is a diffusion_gemma model" in msg and "Remove it" in msg


# ---- (e) the shipped config, and LLaDA2's loop -------------------------------------------------


def test_the_config_validates_on_the_tiny_llada2_model(dirs, capsys):
    doc = yaml.safe_load(CONFIG.read_text())
    hf = doc["checkpoints"]["llada2"]["hf"]
    assert (hf["block_causal"], hf["attention_mask"]) == (32, "4d_additive")
    assert [s["sampler"] for s in doc["samplers"]] == ["diffusers_blocks", "diffusers_pipeline"]
    over = [
        f"checkpoints.llada2.path=hf:{dirs['llada2']}",
        "device=cpu",
        "dtype=float32",
        "seq_lens=[64]",
    ]
    assert cli.main(["validate", str(CONFIG), *over]) == 0
    assert capsys.readouterr().out.startswith("OK: 2 cells")
    assert cli.main(["validate", str(CONFIG), *over, "checkpoints.llada2.hf.block_causal=0"]) == 2
    assert "'hf.block_causal' is 0" in capsys.readouterr().err


class LLaDA2Call(torch.nn.Module):
    """The own model as LLaDA2's ``generate`` calls it: the reference mask, the given positions;
    the pipeline's (b, n) padding mask (all ones here) is not used."""

    def __init__(self, model: torch.nn.Module, block: int) -> None:
        super().__init__()
        self.model, self.block = model, block

    @property
    def device(self) -> torch.device:
        """Where the weights are (the pipeline's execution device)."""
        return next(self.model.parameters()).device

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        assert attention_mask is None or bool(attention_mask.all())
        b, n = input_ids.shape
        mask = reference_mask(n, self.block).expand(b, 1, n, n)
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids)


@torch.no_grad()
def test_both_config_entries_run_llada2s_loop(models, own):
    """LLaDA2Pipeline on the own model with LLaDA2's mask = ``diffusers_blocks`` on the adapter
    = ``diffusers_pipeline`` on the adapter (which it gets through the shim, not raw), token for
    token, with the config's settings scaled down (B = 4); bidirectional attention differs."""
    diffusers = pytest.importorskip("diffusers")
    from samplers.diffusers_blocks import DiffusersBlocks, DiffusersBlocksConfig
    from samplers.diffusers_pipeline import (
        DiffusersPipeline,
        DiffusersPipelineConfig,
        llada_model,
    )

    P, G = 3, 9  # P + G = 12: three whole blocks, the first holding the prompt
    settings = {"threshold": 0.7, "editing_threshold": 0.5, "max_post_steps": 2, "temperature": 0.0}
    prompt = ids(2, P, 21)
    pipe = diffusers.LLaDA2Pipeline(
        model=LLaDA2Call(own, B), scheduler=diffusers.BlockRefinementScheduler(), tokenizer=None
    )
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        input_ids=prompt,
        gen_length=G,
        block_length=B,
        num_inference_steps=B,
        eos_early_stop=False,
        mask_token_id=H.MASK_ID,
        generator=torch.Generator().manual_seed(0),
        output_type="seq",
        **settings,
    ).sequences

    def run(sampler, model):
        res = sampler.sample(
            model,
            batch_size=2,
            seq_len=P + G,
            generator=torch.Generator().manual_seed(0),
            prompt=prompt,
        )
        assert torch.equal(res.tokens[:, :P], prompt)
        return res.tokens[:, P:]

    blocks = DiffusersBlocks(
        DiffusersBlocksConfig(
            block_size=B, num_inference_steps=B, suppress_mask_logit=False, **settings
        )
    )
    pipeline = DiffusersPipeline(
        DiffusersPipelineConfig(
            call_args={
                "block_length": B,
                "num_inference_steps": B,
                "eos_early_stop": False,
                **settings,
            }
        )
    )
    assert llada_model(models["block"])[1] == "adapter_shim"
    assert torch.equal(run(blocks, models["block"]), ref)
    assert torch.equal(run(pipeline, models["block"]), ref)
    assert not torch.equal(run(blocks, models["bidir"]), ref)  # control: attention matters
