"""Hugging Face models behind the denoiser protocol (``harness/model/protocol.py``).

Shapes: b batch rows, n fed tokens, V the logits' width, C DiffusionGemma's canvas length.

* :class:`MaskedLMAdapter` (native ``*ForMaskedLM``) and :class:`RemoteCodeAdapter` (LLaDA- and
  Dream-style code shipped with the weights) are one bidirectional call:
  ``adapter(x, attn_mask=None, logits=None)`` → (b, n, V) raw logits, **unshifted**: for a model
  whose logit at i predicts token i + 1 (``config.logits_shift``, Dream) the adapter returns at
  position i the logit the model produced at the last real position before i
  (:func:`unshift_logits`), so every adapter's row i predicts token i.
* :class:`DiffusionGemmaAdapter`: ``adapter(x)`` with x = [prefix ; canvas] (the last C tokens
  are the canvas) → (b, C, V): the causal encoder caches the prefix, the bidirectional decoder
  denoises the canvas. The cached path is :meth:`~DiffusionGemmaAdapter.encode` once, then
  :meth:`~DiffusionGemmaAdapter.denoise` per step (optionally self-conditioned on the previous
  step's logits), which is how the model's own ``generate`` drives it.

Padding: ``attn_mask`` is a (b, n) boolean key-padding mask (True = real token). The adapter
passes it to the model as its ``attention_mask`` (``2d``), or as a (b, 1, n, n) mask over keys:
boolean (``4d``, Dream's format) or additive in the model's dtype, 0 allowed and −inf elsewhere
(``4d_additive``, LLaDA2.x's format). In the 4-D formats a real query attends the real keys and
a padding query its own position too, so no row is ever fully masked. Where the model's forward
takes ``position_ids``, real tokens get positions 0, 1, … counted from the row's first real
token. A row padded on the left or the right then gives the logits it gives alone at its real
positions (tested); logits at padded positions are undefined.

Block-causal attention (``config.block_causal`` = B, LLaDA2.x): query q may attend key k iff
``pos[k] // B <= pos[q] // B`` and k is real, with ``pos`` the positions the model gets (the
caller's ``positions``; else counted from each row's first real token; else 0 … n−1). The mask is
built on every call, padding or not, in a 4-D format. Blocks start at a row's first real token
because LLaDA2's ``generate`` numbers positions and blocks from its sequence's first token
(``position_ids = arange``, ``tril`` over blocks from 0): a left-padded row then sees exactly the
blocks it sees alone, so the padding guarantee above holds under block causality too (tested).

``ADAPTERS`` maps each kind to its class (did-you-mean on unknown kinds).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dlmcore.registry import Registry
from harness.model.hf.config import HFModelConfig
from harness.model.hf.spec import HFModelError

ADAPTERS: Registry[type] = Registry("hf adapter kind")
"""Adapter classes by kind (``masked_lm``, ``remote_code``, ``diffusion_gemma``)."""


# --------------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------------


def unshift_logits(raw: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """Map "logit at i predicts token i + 1" to "logit at i predicts token i".

    ``out[:, i] = raw[:, p(i)]`` with p(i) the last real position before i. A position with no
    real position before it (position 0, the first real token of a left-padded row: a prompt or
    BOS token in practice, never predicted) keeps its own ``raw[:, i]``; this is Dream's own
    convention ``cat([raw[:, :1], raw[:, :-1]])`` when nothing is padded.

    Args:
        raw: (b, n, V) the model's logits.
        attn_mask: (b, n) bool, True = real token; ``None`` = all real.

    Returns:
        (b, n, V) unshifted logits (a new tensor).
    """
    if attn_mask is None:
        return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
    b, n = attn_mask.shape
    idx = torch.arange(n, device=raw.device).expand(b, n)
    real_at = torch.where(attn_mask, idx, torch.full_like(idx, -1))
    last_real = real_at.cummax(dim=-1).values  # (b, n): last real position <= i
    prev = torch.cat([torch.full_like(last_real[:, :1], -1), last_real[:, :-1]], dim=1)
    prev = torch.where(prev < 0, idx, prev)  # (b, n): last real position < i, else i
    rows = torch.arange(b, device=raw.device)[:, None]
    return raw[rows, prev]


def positions_from_mask(attn_mask: Tensor) -> Tensor:
    """(b, n) bool → (b, n) int64 positions counted from each row's first real token (pads: 0)."""
    return (attn_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def block_causal_allowed(blocks: Tensor) -> Tensor:
    """(b, n) block ids → (b, 1, n, n) bool: query q may attend key k iff block k <= block q."""
    return blocks[:, None, :, None] >= blocks[:, None, None, :]


def allowed_keys(mask: Tensor | None, blocks: Tensor | None) -> Tensor:
    """Which keys each query may attend: (b, 1, n, n) bool, True = allowed.

    A real query: the real keys (``mask``), of blocks up to its own (``blocks``). A padding
    query: the same, plus its own position, so that no row is fully masked (its output is
    undefined; no real query reads it).

    Args:
        mask: (b, n) bool, True = real token; ``None`` = all real.
        blocks: (b, n) block ids (block-causal), or ``None`` (bidirectional).
    """
    if mask is None and blocks is None:
        raise ValueError("allowed_keys needs a padding mask or block ids")
    ref = mask if mask is not None else blocks
    b, n = ref.shape
    if blocks is None:
        allowed = torch.ones(b, 1, n, n, dtype=torch.bool, device=ref.device)
    else:
        allowed = block_causal_allowed(blocks)
    if mask is None:
        return allowed
    own = torch.eye(n, dtype=torch.bool, device=ref.device)
    return (allowed & mask[:, None, None, :]) | (own & ~mask[:, None, :, None])


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """(b, 1, n, n) bool → the same shape in ``dtype``: 0 where allowed, −inf elsewhere.

    LLaDA2's ``generate`` builds the same values as ``tril(...).log()`` (log 1 = 0, log 0 = −inf).
    """
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill(~allowed, float("-inf"))


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def select_rows(out: Tensor, logits: slice | int | None) -> Tensor:
    """The protocol's ``logits=``: ``None`` all rows, ``k`` the last k rows, a slice those rows."""
    if logits is None:
        return out
    if isinstance(logits, int):
        return out[:, -logits:] if logits > 0 else out[:, :0]
    return out[:, logits]


def check_call(
    x: Tensor, attn_mask: Tensor | None, is_causal: bool | None, unsupported: dict[str, Any]
) -> Tensor | None:
    """Validate one call's arguments; return the mask as bool (or ``None``).

    Raises:
        HFModelError: x not (b, n) integer ids, a mask of another shape, ``is_causal=True``,
            or an argument HF adapters do not take.
    """
    extra = sorted(k for k, v in unsupported.items() if v is not None)
    if extra:
        raise HFModelError(
            f"HF adapters take x, positions, attn_mask, is_causal and logits; got {extra}. "
            "Samplers that need the DiT's cached or conditioned calls cannot run on an hf: model."
        )
    if is_causal:
        raise HFModelError(
            "is_causal=True asked of a bidirectional HF model; HF adapters run the model's own "
            "attention only. Use an mdlm-family sampler."
        )
    if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
        raise HFModelError(
            f"x must be (b, n) integer token ids; got shape {tuple(x.shape)}, dtype {x.dtype}."
        )
    if attn_mask is None:
        return None
    if tuple(attn_mask.shape) != tuple(x.shape):
        raise HFModelError(
            f"attn_mask must be a (b, n) key-padding mask shaped like x {tuple(x.shape)} "
            f"(True = real token); got shape {tuple(attn_mask.shape)}."
        )
    return attn_mask.bool()


def model_logits(output: Any, who: str) -> Tensor:
    """The ``.logits`` of a model output (or its first element).

    Raises:
        HFModelError: the output carries no logits (a base model without an LM head).
    """
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, tuple | list) and output:
        logits = output[0]
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise HFModelError(
            f"{who} returned no (b, n, V) logits (got {type(output).__name__}); the class loaded "
            "has no LM head. Point auto_map's AutoModel at the class with the head, or set "
            "hf.kind."
        )
    return logits


# --------------------------------------------------------------------------------------------
# Mask models: ModernBERT / BERT, LLaDA, Dream (bidirectional), LLaDA2.x (block-causal)
# --------------------------------------------------------------------------------------------


class HFDenoiser(nn.Module):
    """An HF mask model as an ``mdlm``-family denoiser: one full forward per call.

    Attention is bidirectional, or block-causal with ``config.block_causal`` (module docstring).

    Args:
        model: the loaded HF model (eval mode); its forward takes ``input_ids`` and
            ``attention_mask`` and returns an object with ``.logits``.
        config: its :class:`HFModelConfig` (``logits_shift``, ``attention_mask`` format).
    """

    kind: ClassVar[str] = ""

    def __init__(self, model: nn.Module, config: HFModelConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.rotary_emb = None
        params = inspect.signature(model.forward).parameters
        self.takes_position_ids = "position_ids" in params

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool | None = None,
        logits: slice | int | None = None,
        **unsupported: Any,
    ) -> Tensor:
        """Uncached forward: (b, n) ids → (b, n', V) raw logits, unshifted.

        Bidirectional, or block-causal over blocks of ``config.block_causal`` positions.

        Args:
            x: (b, n) token ids.
            positions: (n,) or (b, n) positions, for models whose forward takes
                ``position_ids``; default: counted from each row's first real token. Under
                ``block_causal`` B, position p lies in block p // B.
            attn_mask: (b, n) bool key-padding mask, True = real token.
            is_causal: must be falsy (the model's attention is its own, or block-causal).
            logits: rows to return (protocol ``logits=``).
            **unsupported: any other DiT argument; refused unless ``None``.
        """
        mask = check_call(x, attn_mask, is_causal, unsupported)
        raw = self.raw_logits(x, mask, positions)  # (b, n, V)
        out = unshift_logits(raw, mask) if self.config.logits_shift else raw
        return select_rows(out, logits)

    def raw_logits(self, x: Tensor, mask: Tensor | None, positions: Tensor | None) -> Tensor:
        """The model's own logits for (b, n) ids: (b, n, V)."""
        kwargs: dict[str, Any] = {"input_ids": x}
        pos = positions
        if pos is None and mask is not None:
            pos = positions_from_mask(mask)
        if mask is not None or self.config.block_causal:
            kwargs["attention_mask"] = self.mask_argument(mask, self.block_ids(x, pos))
        if pos is not None:
            if not self.takes_position_ids:
                if positions is not None:
                    raise HFModelError(
                        f"this {self.config.model_type} model's forward takes no position_ids, "
                        "so positions= cannot be honoured; call it without positions."
                    )
            else:
                kwargs["position_ids"] = pos.expand(x.shape) if pos.dim() == 1 else pos
        return model_logits(self.model(**kwargs), f"{self.config.model_type} forward")

    def block_ids(self, x: Tensor, pos: Tensor | None) -> Tensor | None:
        """(b, n) block of each position (``pos // B``) under ``block_causal`` B, else ``None``.

        Args:
            x: (b, n) token ids (for the shape and device).
            pos: (n,) or (b, n) positions the model gets, or ``None`` for 0 … n−1.
        """
        B = self.config.block_causal
        if not B:
            return None
        if pos is None:
            pos = torch.arange(x.shape[1], device=x.device)
        return (pos.expand(x.shape) if pos.dim() == 1 else pos) // B

    def mask_argument(self, mask: Tensor | None, blocks: Tensor | None) -> Tensor:
        """The model's ``attention_mask`` for a call (format ``config.attention_mask``).

        Args:
            mask: (b, n) bool key-padding mask (True = real), or ``None`` (all real).
            blocks: (b, n) block ids under ``block_causal``, or ``None`` (bidirectional).

        Returns:
            ``2d``: (b, n) int64; ``4d``: (b, 1, n, n) bool, True = may attend;
            ``4d_additive``: (b, 1, n, n) in the model's dtype, 0 = may attend, −inf elsewhere.
        """
        fmt = self.config.attention_mask
        if fmt == "2d":
            if blocks is not None:  # refused by the config check; never silently bidirectional
                raise HFModelError("block_causal needs a 4d or 4d_additive attention_mask.")
            return mask.long()
        allowed = allowed_keys(mask, blocks)
        if fmt == "4d":
            return allowed
        return additive_mask(allowed, model_dtype(self.model))

    def freeze_conditioning(self) -> HFDenoiser:
        """No-op (HF diffusion LMs here are time-agnostic); the runner calls it on every model."""
        return self

    def num_parameters(self) -> int:
        """Parameter count of the wrapped model."""
        return sum(p.numel() for p in self.model.parameters())


@ADAPTERS.register("masked_lm")
class MaskedLMAdapter(HFDenoiser):
    """A native transformers ``*ForMaskedLM`` (BERT, ModernBERT) as an MDLM denoiser."""

    kind = "masked_lm"


@ADAPTERS.register("remote_code")
class RemoteCodeAdapter(HFDenoiser):
    """A checkpoint whose modeling code ships with it (LLaDA, Dream) as an MDLM denoiser.

    LLaDA-style: ``AutoModel`` → forward(input_ids, attention_mask (b, n)) → ``.logits``, no
    position ids (rotary is relative, so padding on the left keeps the real tokens' logits).
    Dream-style: ``logits_shift`` and a ``4d`` boolean mask with ``position_ids``.
    LLaDA2.x-style: a ``4d_additive`` mask with ``position_ids``, block-causal with
    ``block_causal: 32`` (the mask is then built on every call).
    """

    kind = "remote_code"


# --------------------------------------------------------------------------------------------
# DiffusionGemma: causal encoder cache + bidirectional canvas decoder, uniform corruption
# --------------------------------------------------------------------------------------------


@ADAPTERS.register("diffusion_gemma")
class DiffusionGemmaAdapter(nn.Module):
    """``DiffusionGemmaForBlockDiffusion`` as a ``uniform_block``-family denoiser.

    There is no mask token: a canvas of C = ``config.block_size`` tokens starts uniformly random
    and is refined; each step may condition on the previous step's logits (self-conditioning).

    Args:
        model: the loaded ``DiffusionGemmaForBlockDiffusion`` (eval mode).
        config: its :class:`HFModelConfig`.
    """

    kind: ClassVar[str] = "diffusion_gemma"

    def __init__(self, model: nn.Module, config: HFModelConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.rotary_emb = None

    def new_cache(self) -> Any:
        """An empty encoder K/V cache (transformers ``DynamicCache``)."""
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config.get_text_config(decoder=True))

    def encode(self, x: Tensor, cache: Any = None, attn_mask: Tensor | None = None) -> Any:
        """Append (b, n) clean tokens to the causal encoder cache; return the cache.

        Args:
            x: (b, n) tokens not yet in the cache (the prompt, or a finished canvas).
            cache: from :meth:`new_cache` or an earlier call; ``None`` = a new one.
            attn_mask: (b, past + n) bool over everything the cache will hold, True = real.
        """
        cache = self.new_cache() if cache is None else cache
        past = cache.get_seq_length()
        pos = torch.arange(past, past + x.shape[1], device=x.device).unsqueeze(0)
        mask = None if attn_mask is None else attn_mask.bool()
        self.model.model.encoder(input_ids=x, attention_mask=mask, cache=cache, position_ids=pos)
        return cache

    def denoise(
        self,
        canvas: Tensor,
        cache: Any,
        attn_mask: Tensor | None = None,
        self_conditioning_logits: Tensor | None = None,
    ) -> Tensor:
        """One decoder call: (b, C) canvas against the cache → (b, C, V) logits (read-only cache).

        Args:
            canvas: (b, C) current canvas tokens.
            cache: the encoder cache (:meth:`encode`).
            attn_mask: (b, past + C) bool, True = real; ``None`` = nothing padded.
            self_conditioning_logits: (b, C, V) the previous step's logits, or ``None``.
        """
        mask = None if attn_mask is None else attn_mask.bool()
        out = self.model(
            decoder_input_ids=canvas,
            cache=cache,
            self_conditioning_logits=self_conditioning_logits,
            decoder_attention_mask=mask,
        )
        return model_logits(out, "DiffusionGemma decoder")

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool | None = None,
        logits: slice | int | None = None,
        self_conditioning_logits: Tensor | None = None,
        **unsupported: Any,
    ) -> Tensor:
        """Uncached call: x = [prefix ; canvas] (b, n), n > C → (b, C, V) canvas logits.

        The prefix (at least one token, e.g. BOS) is encoded afresh; there are no logits for
        prefix rows. ``logits=`` selects among the C canvas rows.
        """
        mask = check_call(x, attn_mask, is_causal, unsupported)
        if positions is not None:
            raise HFModelError(
                "DiffusionGemma numbers positions itself (prefix 0 … P−1, canvas after); call it "
                "without positions."
            )
        C = self.config.block_size
        if x.shape[1] <= C:
            raise HFModelError(
                f"DiffusionGemma needs x = [prefix ; canvas] with the canvas of {C} tokens last "
                f"and at least one prefix token (e.g. BOS); got n = {x.shape[1]}."
            )
        cache = self.encode(x[:, :-C], attn_mask=None if mask is None else mask[:, :-C])
        out = self.denoise(x[:, -C:], cache, mask, self_conditioning_logits)
        return select_rows(out, logits)

    def freeze_conditioning(self) -> DiffusionGemmaAdapter:
        """No-op, for the runner."""
        return self

    def num_parameters(self) -> int:
        """Parameter count of the wrapped model."""
        return sum(p.numel() for p in self.model.parameters())
