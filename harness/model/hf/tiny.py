"""Tiny random Hugging Face models written to local directories, one per adapter kind.

Used by the tests and by ``configs/smoke_hf.yaml``: ``python -m harness.model.hf.tiny DIR``
writes all six under DIR (``modernbert``, ``bert``, ``llada``, ``dream``, ``gemma``, ``llada2``;
a few hundred KB, no download). It writes only into an empty or missing DIR, or one it wrote before
(marked by :data:`MARKER`), so it never replaces a user's folder.

* :func:`write_modernbert`: native ``ModernBertForMaskedLM`` + a WordLevel tokenizer whose
  ``[MASK]`` is the last id (the mask id comes from the tokenizer, as for ModernBERT chat models).
* :func:`write_bert`: native ``BertForMaskedLM``, whose absolute position embeddings make
  left padding need position ids counted from the first real token.
* :func:`write_llada_style`: a remote-code directory (``configuration_tinydlm.py``,
  ``modeling_tinydlm.py``, ``auto_map``) holding a bidirectional rotary transformer whose
  forward takes ``attention_mask`` (b, n) and no position ids and returns ``.logits``, with
  ``mask_token_id`` in config.json, as LLaDA's does.
* :func:`write_dream_style`: the same network under ``model_type: Dream``, whose forward takes
  a (b, 1, n, n) boolean ``attention_mask`` and ``position_ids``, and whose logit at i is read as
  predicting token i + 1, as Dream's.
* :func:`write_diffusion_gemma`: ``DiffusionGemmaForBlockDiffusion`` from a tiny
  ``DiffusionGemmaConfig`` (2 layers, 4 experts, canvas 8, a 1-layer vision tower).
* :func:`write_llada2_style`: the same network under ``model_type: llada2_moe``, whose forward
  takes ``attention_mask`` as a (b, 1, n, n) additive float mask (0 allowed, −inf elsewhere;
  ``None`` = bidirectional) and ``position_ids``, as LLaDA2.x's ``modeling_llada2_moe.py`` is
  called by its ``generate``; a (b, n) or boolean mask is refused, so a wrong format cannot pass
  unnoticed.

Weights are redrawn with :func:`spread_` (N(0, 1/fan_in) matrices) so logits vary enough for
padding and equality checks to be able to fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

VOCAB = 64
MASK_ID = VOCAB - 1
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
CANVAS = 8

CONFIG_CODE = """
from transformers import PretrainedConfig


class TinyDLMConfig(PretrainedConfig):
    model_type = "tinydlm"

    def __init__(self, vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=48, max_sequence_length=128, mask_token_id=63, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_sequence_length = max_sequence_length
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)


class TinyDreamConfig(TinyDLMConfig):
    model_type = "Dream"
"""

MODELING_CODE = '''
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tinydlm import TinyDLMConfig, TinyDreamConfig


def rotate(x, pos):
    half = x.shape[-1] // 2
    inv = 1.0 / (10000 ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
    ang = pos[:, None, :, None].float() * inv  # (b, 1, n, half)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()], -1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.h = c.hidden_size, c.num_attention_heads
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        f = c.intermediate_size
        self.up, self.down = nn.Linear(d, 2 * f, bias=False), nn.Linear(f, d, bias=False)

    def forward(self, x, mask, pos):
        b, n, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(rotate(q, pos), rotate(k, pos), v, attn_mask=mask)
        x = x + self.o(a.transpose(1, 2).reshape(b, n, d))
        g, u = self.up(self.n2(x)).chunk(2, -1)
        return x + self.down(F.silu(g) * u)


class Core(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.norm = nn.RMSNorm(c.hidden_size)
        self.head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def forward(self, ids, mask, pos):
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, mask, pos)
        return self.head(self.norm(x))


class TinyBase(PreTrainedModel):
    base_model_prefix = "core"

    def __init__(self, config):
        super().__init__(config)
        self.core = Core(config)
        self.post_init()

    def _init_weights(self, module):
        pass

    def get_output_embeddings(self):
        return self.core.head


class TinyLLaDAModelLM(TinyBase):
    """LLaDA-style: attention_mask (b, n) of 0/1, no position ids, bidirectional."""

    config_class = TinyDLMConfig

    def forward(self, input_ids, attention_mask=None, **kwargs):
        b, n = input_ids.shape
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        pos = torch.arange(n, device=input_ids.device).expand(b, n)
        return MaskedLMOutput(logits=self.core(input_ids, mask, pos))


class TinyDreamModel(TinyBase):
    """Dream-style: attention_mask (b, 1, n, n) bool or "full"/None, position_ids (b, n)."""

    config_class = TinyDreamConfig

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        b, n = input_ids.shape
        mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
        if position_ids is None:
            position_ids = torch.arange(n, device=input_ids.device).expand(b, n)
        return MaskedLMOutput(logits=self.core(input_ids, mask, position_ids))
'''


LLADA2_CONFIG_CODE = """
from .configuration_tinydlm import TinyDLMConfig


class TinyLLaDA2Config(TinyDLMConfig):
    model_type = "llada2_moe"
"""

LLADA2_MODELING_CODE = '''
import torch
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tinyllada2 import TinyLLaDA2Config
from .modeling_tinydlm import TinyBase


class TinyLLaDA2ModelLM(TinyBase):
    """LLaDA2-style: attention_mask (b, 1, n, n) additive float or None, position_ids (b, n)."""

    config_class = TinyLLaDA2Config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        b, n = input_ids.shape
        if attention_mask is not None and (
            attention_mask.dim() != 4 or not attention_mask.is_floating_point()
        ):
            raise ValueError(
                "attention_mask must be a (b, 1, n, n) additive float mask; got "
                f"{tuple(attention_mask.shape)} {attention_mask.dtype}"
            )
        if position_ids is None:
            position_ids = torch.arange(n, device=input_ids.device).expand(b, n)
        return MaskedLMOutput(logits=self.core(input_ids, attention_mask, position_ids))
'''


def spread_(model: nn.Module, seed: int) -> nn.Module:
    """Redraw every matrix N(0, 1/fan_in) from ``seed``; vectors (norm scales, biases) stay."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


def write_tokenizer(directory: Path) -> None:
    """A WordLevel tokenizer: [PAD] [CLS] [SEP] [UNK] w4 … w62 [MASK] (ids 0 … 63)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"] + [f"w{i}" for i in range(4, MASK_ID)] + ["[MASK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(directory)


def write_modernbert(directory: Path, seed: int = 0) -> Path:
    """Tiny ModernBertForMaskedLM (d 32, 2 layers, local window 8) + tokenizer at ``directory``."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    cfg = ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        local_attention=8,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        cls_token_id=BOS_ID,
        sep_token_id=EOS_ID,
    )
    torch.manual_seed(seed)
    model = spread_(ModernBertForMaskedLM(cfg), seed).eval()
    model.save_pretrained(directory)
    write_tokenizer(directory)
    return directory


def write_bert(directory: Path, seed: int = 2) -> Path:
    """Tiny BertForMaskedLM (absolute position embeddings) + tokenizer at ``directory``."""
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(seed)
    spread_(BertForMaskedLM(cfg), seed).eval().save_pretrained(directory)
    write_tokenizer(directory)
    return directory


def write_remote_code(directory: Path, *, dream: bool, seed: int = 0) -> Path:
    """A remote-code directory (LLaDA-style, or Dream-style if ``dream``) with random weights."""
    from transformers import AutoConfig, AutoModel

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "configuration_tinydlm.py").write_text(CONFIG_CODE)
    (directory / "modeling_tinydlm.py").write_text(MODELING_CODE)
    cls_cfg, cls_model = ("TinyDreamConfig", "TinyDreamModel")
    if not dream:
        cls_cfg, cls_model = ("TinyDLMConfig", "TinyLLaDAModelLM")
    doc = {
        "model_type": "Dream" if dream else "tinydlm",
        "architectures": [cls_model],
        "auto_map": {
            "AutoConfig": f"configuration_tinydlm.{cls_cfg}",
            "AutoModel": f"modeling_tinydlm.{cls_model}",
        },
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 48,
        "max_sequence_length": 128,
        "mask_token_id": MASK_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    (directory / "config.json").write_text(json.dumps(doc))
    cfg = AutoConfig.from_pretrained(directory, trust_remote_code=True, local_files_only=True)
    torch.manual_seed(seed)
    model = spread_(AutoModel.from_config(cfg, trust_remote_code=True), seed).eval()
    model.save_pretrained(directory)
    return directory


def write_llada_style(directory: Path, seed: int = 0) -> Path:
    """LLaDA-style remote-code directory (``mask_token_id`` 63 in config.json)."""
    return write_remote_code(directory, dream=False, seed=seed)


def write_dream_style(directory: Path, seed: int = 1) -> Path:
    """Dream-style remote-code directory (``model_type: Dream``: shifted logits, 4-D mask)."""
    return write_remote_code(directory, dream=True, seed=seed)


def write_llada2_style(directory: Path, seed: int = 3) -> Path:
    """LLaDA2.x-style remote-code directory (``model_type: llada2_moe``: additive 4-D mask)."""
    from transformers import AutoConfig, AutoModel

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "configuration_tinydlm.py").write_text(CONFIG_CODE)
    (directory / "modeling_tinydlm.py").write_text(MODELING_CODE)
    (directory / "configuration_tinyllada2.py").write_text(LLADA2_CONFIG_CODE)
    (directory / "modeling_tinyllada2.py").write_text(LLADA2_MODELING_CODE)
    doc = {
        "model_type": "llada2_moe",
        "architectures": ["TinyLLaDA2ModelLM"],
        "auto_map": {
            "AutoConfig": "configuration_tinyllada2.TinyLLaDA2Config",
            "AutoModel": "modeling_tinyllada2.TinyLLaDA2ModelLM",
        },
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 48,
        "max_position_embeddings": 128,
        "mask_token_id": MASK_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    (directory / "config.json").write_text(json.dumps(doc))
    cfg = AutoConfig.from_pretrained(directory, trust_remote_code=True, local_files_only=True)
    torch.manual_seed(seed)
    model = spread_(AutoModel.from_config(cfg, trust_remote_code=True), seed).eval()
    model.save_pretrained(directory)
    return directory


def diffusion_gemma_config():
    """A tiny ``DiffusionGemmaConfig``: V 64, d 32, 2 layers (sliding + full), 4 experts."""
    from transformers import DiffusionGemmaConfig
    from transformers.models.gemma4.configuration_gemma4 import Gemma4VisionConfig

    vision = Gemma4VisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        position_embedding_size=16,
        patch_size=4,
    )
    text = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"],
        "global_head_dim": 16,
        "num_global_key_value_heads": 1,
        "num_experts": 4,
        "top_k_experts": 2,
        "moe_intermediate_size": 16,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "bos_token_id": BOS_ID,
    }
    return DiffusionGemmaConfig(
        text_config=text,
        vision_config=vision.to_dict(),
        canvas_length=CANVAS,
        boi_token_id=60,
        eoi_token_id=61,
        image_token_id=62,
    )


def write_diffusion_gemma(directory: Path, seed: int = 0) -> Path:
    """Tiny ``DiffusionGemmaForBlockDiffusion`` (canvas 8) saved at ``directory``."""
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(diffusion_gemma_config()).eval()
    spread_(model, seed).save_pretrained(directory)
    return directory


MARKER = ".dlmbench-tiny-hf"
"""File that marks a folder written by :func:`write_all` (safe to rewrite)."""

WRITERS = {
    "modernbert": write_modernbert,
    "bert": write_bert,
    "llada": write_llada_style,
    "dream": write_dream_style,
    "gemma": write_diffusion_gemma,
    "llada2": write_llada2_style,
}


def write_all(root: Path) -> dict[str, Path]:
    """Write every tiny model under ``root``; returns name → directory.

    Raises:
        UserError: ``root`` is a file, or a non-empty folder this function did not write.
    """
    from dlmcore.errors import UserError

    root = Path(root)
    if root.exists() and (
        not root.is_dir() or (any(root.iterdir()) and not (root / MARKER).is_file())
    ):
        raise UserError(
            f"{str(root)!r} exists and was not written by harness.model.hf.tiny; refusing to "
            "write into it. Pass a new folder (e.g. .cache/hf-tiny)."
        )
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bar per model
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("tiny random HF models for tests and configs/smoke_hf.yaml\n")
    return {name: write(root / name) for name, write in WRITERS.items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.model.hf.tiny DIR``: write the tiny models; 2 on a refused folder."""
    import argparse
    import sys

    from dlmcore.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m harness.model.hf.tiny", description=__doc__)
    parser.add_argument("root", type=Path, help="folder to write (new, empty or written before)")
    args = parser.parse_args(argv)
    try:
        written = write_all(args.root)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
