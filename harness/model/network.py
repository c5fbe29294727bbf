"""The DiT denoiser shared by every model family, with exact cached call paths.

One network serves MDLM, BD3-LM, Eso-LM (B) and AR (``algorithms.md`` §1): token embedding,
AdaLN conditioning (a constant for the time-agnostic checkpoints, precomputed once), rotary
positions (rotate-half, base 10 000), bias-free LayerNorm in fp32, GELU-tanh MLP and an untied
head. The AR variant has no AdaLN. Parameter names equal the reference checkpoints' keys after the
``backbone.`` prefix, so every public checkpoint maps onto it one to one.

Call paths (each has an uncached oracle, see ``tests/harness/test_network_cache.py``):

* :meth:`DiT.forward`: uncached forward under any attention pattern (bidirectional, causal,
  boolean mask) with arbitrary rotary positions. It is the oracle for every cached path and the
  training forward of every family.
* :meth:`DiT.forward_cached`: feeds ``n`` new tokens, writes their rotated K/V at cache rows
  ``[start, start + n)`` and attends over rows ``[0, start + n)``; the new rows see every earlier
  row, and each other either bidirectionally (BD3-LM block) or causally (Eso-LM step, AR step).
* :meth:`DiT.forward_cached_reference`: the kuleshov-group/bd3lms style QKV cache, which stores
  un-rotated Q, K, V and re-attends with every cached position as a query, doing the reference
  call's work (AdaLN per call, a per-layer clone, rotary over q, k, v of every row; faithful
  timings).

Every linear a call runs goes through :func:`skinny.linear`: on few rows it uses the product
and the weight layout measured fastest for that shape on this machine (``skinny.py``);
:meth:`DiT.freeze_conditioning` measures them, ``train()`` restores the row-major weights.

Shapes: b = batch, n = tokens fed this call, L = cache length, V = vocabulary (mask included),
d = hidden size, H = heads, d_h = head dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.model import skinny
from harness.model.config import (  # noqa: F401 -- FAMILIES, MODEL_SIZES re-exported
    FAMILIES,
    MODEL_SIZES,
    SIGMA_FREQ_DIM,
    DiTConfig,
)

# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """LayerNorm without bias, always computed in fp32 (eps 1e-5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """(…, d) → (…, d) in fp32: one ``F.layer_norm`` on fp32 input and scale."""
        w = self.weight
        if x.dtype != torch.float32:
            x = x.float()
        if w.dtype != torch.float32:
            w = w.float()
        return F.layer_norm(x, (self.dim,), w)


class TimestepEmbedder(nn.Module):
    """σ → c: a 256-wide sinusoid followed by Linear, SiLU, Linear (``sigma_map``)."""

    def __init__(self, cond_dim: int, freq_dim: int = SIGMA_FREQ_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def sinusoid(self, sigma: Tensor) -> Tensor:
        """(b,) → (b, 256): [cos(σ f_j) …, sin(σ f_j) …], f_j = exp(−ln(10⁴) j / 128)."""
        half = self.freq_dim // 2
        j = torch.arange(half, device=sigma.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(10000.0) * j / half)
        args = sigma.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, sigma: Tensor) -> Tensor:
        """(b,) → (b, c_dim)."""
        return self.mlp(self.sinusoid(sigma).to(self.mlp[0].weight.dtype))


class Rotary(nn.Module):
    """Rotary tables (GPT-NeoX rotate-half), cached for positions 0 … n−1 and grown on demand."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        self._cos: Tensor | None = None
        self._sin: Tensor | None = None

    def _table(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._cos is None or self._cos.shape[0] < n or self._cos.device != device:
            size = max(n, 1024 if self._cos is None else 2 * self._cos.shape[0])
            p = torch.arange(size, device=device, dtype=torch.float32)
            ang = torch.outer(p, self.inv_freq.to(device))  # (P, d_h/2)
            ang = torch.cat([ang, ang], dim=-1)  # (P, d_h)
            self._cos, self._sin = ang.cos(), ang.sin()
        return self._cos, self._sin

    def tables(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Gather cos/sin for ``positions`` (n,) or (b, n) → (…, n, 1, d_h) each."""
        n_max = int(positions.max().item()) + 1 if positions.numel() else 1
        cos, sin = self._table(n_max, positions.device)
        return cos[positions].unsqueeze(-2), sin[positions].unsqueeze(-2)

    def arange_tables(self, start: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Tables for natural positions start … start+n−1 → (n, 1, d_h) each (no host sync)."""
        cos, sin = self._table(start + n, device)
        return cos[start : start + n, None], sin[start : start + n, None]

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Rotary:  # type: ignore[override]
        self._cos = self._sin = None  # device/dtype moves invalidate the cached tables
        return super()._apply(fn, recurse)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply rotary to x (b, n, H, d_h) with cos/sin broadcastable to it: x·cos + rot(x)·sin."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    """(…, d_h) → (…, d_h): [−x₂, x₁] of the two halves (GPT-NeoX rotary)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """Attention on (b, n, H, d_h) queries and (b, H, S, d_h) keys/values → (b, n, H, d_h)."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=causal)
    return o.transpose(1, 2)


AttnFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]
"""(layer index, q, k, v each (b, n, H, d_h) un-rotated) → attention output (b, n, H, d_h)."""

LinearFn = Callable[[Tensor, nn.Linear], Tensor]
"""(x (…, in), an ``nn.Linear``) → (…, out): :func:`skinny.linear` or :func:`skinny.plain`."""


class DiTBlock(nn.Module):
    """One transformer block; AdaLN-modulated unless ``adaln`` is false (AR)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        # Registration order = the reference's parameter order (EMA shadow lists depend on it).
        self.norm1 = LayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_ratio * d),
            nn.GELU(approximate="tanh"),
            nn.Linear(cfg.mlp_ratio * d, d),
        )
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * d) if cfg.adaln else None
        self.dropout = cfg.dropout
        self._mlp = (self.mlp[0], self.mlp[2])  # a tuple: not registered twice

    def forward(
        self,
        h: Tensor,
        mods: tuple[Tensor, ...] | None,
        layer: int,
        attn: AttnFn,
        linear: LinearFn = skinny.linear,
    ) -> Tensor:
        """(b, n, d) → (b, n, d). ``mods`` = (shift₁, 1 + scale₁, gate₁, shift₂, 1 + scale₂, gate₂).

        LayerNorm runs in fp32 and its output is cast to the weights' dtype, so bf16 parameters
        work without autocast; modulation and gated residuals are one ``addcmul`` each.
        """
        b, n, d = h.shape
        dtype = self.attn_qkv.weight.dtype
        a = self.norm1(h)
        if mods is not None:
            a = torch.addcmul(mods[0], a, mods[1])
        qkv = linear(a.to(dtype), self.attn_qkv).view(b, n, 3, self.n_heads, self.head_dim)
        o = attn(layer, qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, n, d)
        o = self._drop(linear(o, self.attn_out))
        h = h + o if mods is None else torch.addcmul(h, mods[2], o)
        a = self.norm2(h)
        if mods is not None:
            a = torch.addcmul(mods[3], a, mods[4])
        up, down = self._mlp
        m = self._drop(linear(F.gelu(linear(a.to(dtype), up), approximate="tanh"), down))
        return h + m if mods is None else torch.addcmul(h, mods[5], m)

    def _drop(self, x: Tensor) -> Tensor:
        """Residual dropout in training; no call at all in eval."""
        if self.training and self.dropout > 0:
            return F.dropout(x, self.dropout, True)
        return x


class VocabEmbedding(nn.Module):
    """A raw [V, d] matrix indexed by token id (no scaling, no position embedding)."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        """(b, n) int64 → (b, n, d)."""
        return self.embedding[x]


class FinalLayer(nn.Module):
    """LN_f, AdaLN (shift, scale) unless AR, then the untied linear head."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.norm_final = LayerNorm(d)
        self.linear = nn.Linear(d, cfg.vocab_size)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 2 * d) if cfg.adaln else None

    def forward(
        self, h: Tensor, mods: tuple[Tensor, Tensor] | None, linear: LinearFn = skinny.linear
    ) -> Tensor:
        """(b, n, d) → (b, n, V) raw logits. ``mods`` = (shift, 1 + scale)."""
        a = self.norm_final(h)
        if mods is not None:
            a = torch.addcmul(mods[0], a, mods[1])
        return linear(a.to(self.linear.weight.dtype), self.linear)


# --------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Rotated K and V per layer, preallocated to (b, H, L, d_h) each.

    Used by Eso-LM (B), AR and the efficient BD3-LM path. The cache holds tensors only; which
    rows are committed is the sampler's bookkeeping (it passes ``start`` to every call).
    """

    k: list[Tensor]
    v: list[Tensor]

    @property
    def batch_size(self) -> int:
        """b."""
        return self.k[0].shape[0]

    @property
    def length(self) -> int:
        """L, the number of rows."""
        return self.k[0].shape[2]

    def reset(self) -> None:
        """Zero every row, so nothing from an earlier generation survives."""
        for t in (*self.k, *self.v):
            t.zero_()

    def nbytes(self) -> int:
        """Bytes held by the cache."""
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


@dataclass
class QKVCache:
    """kuleshov-group/bd3lms style cache: un-rotated Q, K, V per layer, (b, L, 3d) each.

    ``mask`` is the (L, L) block-causal boolean pattern for ``block_size``, built once at
    allocation so no mask is constructed inside the step loop.
    """

    qkv: list[Tensor]
    block_size: int
    mask: Tensor
    rope: tuple[int, Tensor, Tensor] | None = None
    """(rows, cos, sin) of the last call, each (1, rows, 3, 1, d_h), rebuilt when rows change."""

    @property
    def batch_size(self) -> int:
        """b."""
        return self.qkv[0].shape[0]

    @property
    def length(self) -> int:
        """L."""
        return self.qkv[0].shape[1]

    def reset(self) -> None:
        """Zero every row."""
        for t in self.qkv:
            t.zero_()

    def nbytes(self) -> int:
        """Bytes held by the cache (the mask included)."""
        return sum(t.numel() * t.element_size() for t in self.qkv) + self.mask.numel()


def block_causal_mask(n: int, block_size: int, device: torch.device | None = None) -> Tensor:
    """(n, n) bool: query q may attend key k iff block(k) <= block(q) (BD3-LM clean pattern)."""
    blk = torch.arange(n, device=device) // block_size
    return blk[None, :] <= blk[:, None]


def step_mask(start: int, n: int, device: torch.device) -> Tensor:
    """(n, start + n) bool: every earlier row, plus causal within the n fed rows."""
    q = torch.arange(n, device=device)[:, None] + start
    return torch.arange(start + n, device=device)[None, :] <= q


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


@dataclass
class _Frozen:
    """AdaLN vectors, each (b or 1, 1, d): per block (shift, 1 + scale, gate) × 2, final two."""

    blocks: list[tuple[Tensor, ...]] = field(default_factory=list)
    final: tuple[Tensor, Tensor] | None = None
    params: list[Tensor] = field(default_factory=list)  # the parameters the vectors read
    versions: list[int] = field(default_factory=list)  # their in-place version counters then

    def current(self) -> bool:
        """Whether no parameter it read was modified in place since (an EMA swap, p.copy_)."""
        return [p._version for p in self.params] == self.versions


class DiT(nn.Module):
    """The diffusion transformer of the reference papers (and its AR variant).

    Args:
        cfg: the network configuration.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        cfg.check()
        self.config = cfg
        # Registration order = the reference's parameter order (see checkpoints.md §4).
        self.vocab_embed = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.sigma_map = TimestepEmbedder(cfg.cond_dim) if cfg.adaln else None
        self.rotary_emb = Rotary(cfg.head_dim, cfg.rope_base)
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.n_blocks)])
        self.output_layer = FinalLayer(cfg)
        self._frozen: _Frozen | None = None
        # Linears of one shape share their measured skinny-row rule (harness.model.skinny).
        skinny.group_linears(self._call_linears())
        self.reset_parameters()

    # ---- initialisation and conditioning ----------------------------------------------------

    def reset_parameters(self) -> None:
        """Reference initialisation: AdaLN projections and the output head start at zero."""
        for blk in self.blocks:
            if blk.adaLN_modulation is not None:
                nn.init.zeros_(blk.adaLN_modulation.weight)
                nn.init.zeros_(blk.adaLN_modulation.bias)
        fl = self.output_layer
        nn.init.zeros_(fl.linear.weight)
        nn.init.zeros_(fl.linear.bias)
        if fl.adaLN_modulation is not None:
            nn.init.zeros_(fl.adaLN_modulation.weight)
            nn.init.zeros_(fl.adaLN_modulation.bias)
        self._frozen = None

    def _conditioning(self, sigma: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """c = SiLU(σ-embedding), (b, c_dim); σ = 0 (``batch`` rows) unless time-conditioned."""
        assert self.sigma_map is not None
        if sigma is None or not self.config.time_conditioning:
            sigma = torch.zeros(batch, device=device)
        return F.silu(self.sigma_map(sigma))

    def _modulations(self, sigma: Tensor | None, device: torch.device) -> _Frozen | None:
        """Per-block and final AdaLN vectors, each (b or 1, 1, d); ``None`` for AR."""
        if not self.config.adaln:
            return None
        live = sigma is not None and self.config.time_conditioning
        frozen = self._frozen
        if frozen is not None and not live:
            if frozen.current():
                return frozen
            # Weights were changed in place (an EMA swap, p.copy_): the vectors are stale.
            return self.freeze_conditioning()._frozen
        return self._compute_modulations(sigma, 1, device)

    def _compute_modulations(
        self, sigma: Tensor | None, batch: int, device: torch.device
    ) -> _Frozen:
        """AdaLN vectors from the conditioning: per block 6, final 2, each (b, 1, d)."""
        c = self._conditioning(sigma, batch, device)
        out = _Frozen()
        for blk in self.blocks:
            s1, sc1, g1, s2, sc2, g2 = blk.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
            out.blocks.append((s1, 1 + sc1, g1, s2, 1 + sc2, g2))
        shift, scale = self.output_layer.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        out.final = (shift, 1 + scale)
        return out

    def _call_linears(self) -> list[nn.Linear]:
        """The linears every call runs: per block QKV, out, MLP up and down; the head."""
        per_block = [(b.attn_qkv, b.attn_out, *b._mlp) for b in self.blocks]
        return [m for group in per_block for m in group] + [self.output_layer.linear]

    def _conditioning_params(self) -> list[Tensor]:
        mods = [blk.adaLN_modulation for blk in self.blocks] + [self.output_layer.adaLN_modulation]
        return [*self.sigma_map.parameters(), *(p for m in mods for p in m.parameters())]

    def freeze_conditioning(self) -> DiT:
        """Precompute the AdaLN vectors for σ = 0 and measure the skinny-row rules (inference).

        The rules (:mod:`harness.model.skinny`) are measured once per linear shape, device,
        dtype and thread count in a process, here rather than inside the first cached call.

        Cleared by ``train()``, ``load_state_dict`` and ``.to()``; recomputed automatically when
        a parameter they depend on is modified in place (its version counter moves).
        """
        if self.config.adaln:
            with torch.no_grad():
                frozen = self._compute_modulations(None, 1, self.vocab_embed.embedding.device)
            frozen.params = self._conditioning_params()
            frozen.versions = [p._version for p in frozen.params]
            self._frozen = frozen
        if skinny.current_mode() != "never":
            self.prepare_linears(*self._design_rows())
        return self

    def _design_rows(self) -> tuple[int | None, int | None]:
        """Rows a cached call of this family feeds through the blocks and through the head.

        AR: 1 and 1; Eso-LM (B): 2 (the last committed token and the new mask, one-step lag)
        and 1 (k = 1 in the sequential phase); BD3-LM: L′ and L′; MDLM: none (full forwards).
        """
        family, block = self.config.family, self.config.block_size
        return {"ar": (1, 1), "esolm": (2, 1), "bd3lm": (block, block)}.get(family, (None, None))

    def prepare_linears(self, block_rows: int | None, head_rows: int | None) -> DiT:
        """Choose each linear's weight layout for these row counts and measure its product rule.

        Measured once per shape, device, dtype and thread count in a process
        (:mod:`harness.model.skinny`); a row count of ``None`` or above ``skinny.MAX_ROWS``
        keeps the weights as they are. Same values, same parameter objects; ``train()``
        restores the row-major layout.
        """
        with torch.no_grad():
            skinny.prepare(self._call_linears()[:-1], block_rows)
            skinny.prepare([self.output_layer.linear], head_rows)
        return self

    def train(self, mode: bool = True) -> DiT:  # type: ignore[override]
        """Switch mode; leaving inference drops the frozen conditioning and weight layouts."""
        if mode:
            self._frozen = None
            skinny.set_layout(self._call_linears(), "rows")
        return super().train(mode)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`nn.Module.state_dict`, with every tensor contiguous (row-major).

        Whatever layout :meth:`prepare_linears` gave the weights: safetensors needs it.
        """
        out = super().state_dict(*args, **kwargs)
        for k, v in out.items():
            if isinstance(v, Tensor) and not isinstance(v, nn.Parameter) and not v.is_contiguous():
                out[k] = v.contiguous()
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As :meth:`nn.Module.load_state_dict`, then drop the frozen conditioning."""
        self._frozen = None
        skinny.invalidate()  # assign=True may bring weights of another layout
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> DiT:  # type: ignore[override]
        self._frozen = None
        skinny.invalidate()  # another device or dtype: other rules
        return super()._apply(fn, recurse)

    # ---- shared pieces -----------------------------------------------------------------------

    def _run(
        self,
        x: Tensor,
        mods: _Frozen | None,
        attn: AttnFn,
        rows: slice | None,
        linear: LinearFn = skinny.linear,
    ) -> Tensor:
        """Embed, run every block with ``attn``, and apply the head to ``rows`` (b, n', V)."""
        h = self._run_blocks(x, mods, attn, linear)
        if rows is not None:
            h = h[:, rows]
        return self.output_layer(h, None if mods is None else mods.final, linear)

    def _run_blocks(
        self, x: Tensor, mods: _Frozen | None, attn: AttnFn, linear: LinearFn = skinny.linear
    ) -> Tensor:
        """Embed and run every block: (b, n) → (b, n, d)."""
        h = self.vocab_embed(x)  # (b, n, d)
        for i, blk in enumerate(self.blocks):
            h = blk(h, None if mods is None else mods.blocks[i], i, attn, linear)
        return h

    @staticmethod
    def _rows(logits: slice | int | None) -> slice | None:
        if isinstance(logits, int):
            return slice(-logits, None) if logits > 0 else slice(0, 0)
        return logits

    # ---- uncached forward (the oracle, and training) ----------------------------------------

    def forward(
        self,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool | None = None,
        sigma: Tensor | None = None,
        logits: slice | int | None = None,
        kv_out: list[tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """Uncached forward over ``x`` under one attention pattern.

        Args:
            x: token ids (b, n), int64.
            positions: rotary positions (n,) or (b, n); default 0 … n−1. Eso-LM passes π.
            attn_mask: boolean (n, n) or (b, 1, n, n), True = may attend. Excludes ``is_causal``.
            is_causal: plain causal attention in the fed order; default: causal for ``ar``,
                bidirectional otherwise.
            sigma: conditioning scalars (b,), used only by time-conditioned families.
            logits: which rows get the head: ``None`` all, an int k the last k, or a slice.
            kv_out: if given, receives the rotated (k, v) of every layer, (b, H, n, d_h) each.

        Returns:
            Raw logits (b, n', V); SUBS is applied by the caller.
        """
        if is_causal is None:
            is_causal = attn_mask is None and self.config.family == "ar"
        if attn_mask is not None and is_causal:
            raise ValueError("pass either attn_mask or is_causal=True, not both")
        n = x.shape[1]
        if positions is None:
            cos, sin = self.rotary_emb.arange_tables(0, n, x.device)
        else:
            cos, sin = self.rotary_emb.tables(positions)

        def attn(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # (b, H, n, d_h)
            if kv_out is not None:
                kv_out.append((k, v))
            return sdpa(q, k, v, attn_mask, bool(is_causal))

        return self._run(x, self._modulations(sigma, x.device), attn, self._rows(logits))

    # ---- cached forwards ----------------------------------------------------------------------

    @staticmethod
    def block_causal_mask(n: int, block_size: int, device: torch.device | None = None) -> Tensor:
        """(n, n) bool: the BD3-LM block-causal pattern (denoiser protocol)."""
        return block_causal_mask(n, block_size, device)

    def new_kv_cache(
        self,
        batch_size: int,
        length: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """Allocate a zeroed K/V cache of ``length`` rows, (b, H, L, d_h) per layer and tensor."""
        p = self.vocab_embed.embedding
        shape = (batch_size, self.config.n_heads, length, self.config.head_dim)
        kw = {"dtype": dtype or p.dtype, "device": device or p.device}
        n = self.config.n_blocks
        return KVCache(
            k=[torch.zeros(shape, **kw) for _ in range(n)],
            v=[torch.zeros(shape, **kw) for _ in range(n)],
        )

    def new_qkv_cache(
        self,
        batch_size: int,
        length: int,
        block_size: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> QKVCache:
        """Allocate a zeroed reference-style QKV cache, (b, L, 3d) per layer."""
        p = self.vocab_embed.embedding
        dev = torch.device(device) if device is not None else p.device
        shape = (batch_size, length, 3 * self.config.hidden_size)
        return QKVCache(
            qkv=[
                torch.zeros(shape, dtype=dtype or p.dtype, device=dev)
                for _ in range(self.config.n_blocks)
            ],
            block_size=block_size,
            mask=block_causal_mask(length, block_size, dev),
        )

    def forward_cached(
        self,
        x: Tensor,
        cache: KVCache,
        *,
        start: int,
        causal: bool,
        positions: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        logits: slice | int | None = None,
        return_logits: bool = True,
        attn_mask: Tensor | None = None,
    ) -> Tensor | None:
        """Feed ``n`` tokens against the cache (Eso-LM step, AR step, BD3-LM block / store).

        Writes the rotated K/V of the fed rows at cache rows ``[start, start + n)`` of every
        layer, then attends over rows ``[0, start + n)``: each fed row sees every earlier row, and
        the fed rows see each other causally (``causal=True``: Eso-LM, AR) or fully (BD3-LM).

        Args:
            x: fed token ids (b, n).
            cache: a cache from :meth:`new_kv_cache` with at least ``start + n`` rows.
            start: first cache row written (rows before it must hold committed K/V).
            causal: causal attention among the fed rows (in fed order).
            positions: rotary positions of the fed rows, (n,) or (b, n); default
                ``start … start + n − 1`` (natural order: AR, BD3-LM).
            rope: precomputed (cos, sin) for the fed rows, each (n, 1, d_h) or (b, n, 1, d_h);
                Eso-LM slices its π-gathered tables. Excludes ``positions``.
            logits: head rows, as in :meth:`forward` (Eso-LM: the last k).
            return_logits: ``False`` skips the head (BD3-LM store pass).
            attn_mask: boolean (n, start + n) pattern (True = may attend) replacing ``causal``,
                e.g. block-causal when a BD3-LM sliding window re-encodes several blocks at once.

        Returns:
            Logits (b, n', V), or ``None`` when ``return_logits`` is false.
        """
        n = x.shape[1]
        end = start + n
        if end > cache.length:
            raise ValueError(f"cache has {cache.length} rows; this call needs {end}")
        if rope is not None:
            cos, sin = rope
        elif positions is not None:
            cos, sin = self.rotary_emb.tables(positions)
        else:
            cos, sin = self.rotary_emb.arange_tables(start, n, x.device)
        # One mask per call, shared by all layers; None when every row may see every row.
        mask = step_mask(start, n, x.device) if causal and n > 1 and start > 0 else None
        plain_causal = causal and n > 1 and start == 0
        if attn_mask is not None:
            mask, plain_causal = attn_mask, False

        def attn(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            kc, vc = cache.k[layer], cache.v[layer]
            kc[:, :, start:end] = k.transpose(1, 2)
            vc[:, :, start:end] = v.transpose(1, 2)
            return sdpa(q, kc[:, :, :end], vc[:, :, :end], mask, plain_causal)

        mods = self._modulations(None, x.device)
        if not return_logits:
            self._run_blocks(x, mods, attn)
            return None
        return self._run(x, mods, attn, self._rows(logits))

    def forward_cached_reference(
        self,
        x: Tensor,
        cache: QKVCache,
        *,
        start: int,
        return_logits: bool = True,
    ) -> Tensor | None:
        """BD3-LM block call doing the work of kuleshov-group/bd3lms's cached call (faithful).

        What bd3lms's ``DIT.forward(sample_mode=True)`` does per call, and so this does:

        * AdaLN recomputed: σ-map and every block's and the final modulation, for b rows;
        * per layer: write the fed block's un-rotated (q, k, v) at cache rows ``[start, end)``,
          **clone** rows ``[0, end)``, rotate q, k **and** v of every one of them (v by the
          identity: cos 1, sin 0), attend with **every** row as a query, keep the last ``n``;
        * plain ``F.linear`` products (no skinny-row dispatch).

        bd3lms passes no attention mask (the kept rows, one last block, see every row); the
        prebuilt block-causal mask is passed here, which leaves those rows unchanged, and is
        required when ``x`` spans several blocks (the sliding-window re-encode from row 0).
        Attention costs 4·d·(start+n)² FLOPs per layer instead of 4·d·n·(start+n). Same outputs
        as :meth:`forward_cached` with ``causal=False``.

        Args:
            x: fed block (b, n); ``start`` must be a multiple of the cache's block size.
            cache: from :meth:`new_qkv_cache`.
            start: first row written.
            return_logits: ``False`` for the store pass.

        Returns:
            Logits (b, n, V) or ``None``.
        """
        b, n = x.shape
        end = start + n
        if end > cache.length:
            raise ValueError(f"cache has {cache.length} rows; this call needs {end}")
        H, dh = self.config.n_heads, self.config.head_dim
        _, cos, sin = self._reference_rope(cache, end, x.device)
        mask = cache.mask[:end, :end]

        def attn(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            buf = cache.qkv[layer]
            buf[:, start:end] = torch.stack([q, k, v], dim=2).view(b, n, 3 * H * dh)
            allqkv = buf[:, :end].clone().view(b, end, 3, H, dh)  # the per-layer clone
            allqkv = rotate(allqkv, cos, sin).transpose(1, 3)  # (b, H, 3, P+n, d_h)
            qa, ka, va = allqkv[:, :, 0], allqkv[:, :, 1], allqkv[:, :, 2]
            o = sdpa(qa.transpose(1, 2), ka, va, mask, False)  # every row re-attends
            return o.reshape(b, end, H * dh)[:, start:].view(b, n, H, dh)  # (b, n, H, d_h)

        mods = self._compute_modulations(None, b, x.device) if self.config.adaln else None
        if not return_logits:
            self._run_blocks(x, mods, attn, skinny.plain)
            return None
        return self._run(x, mods, attn, None, skinny.plain)

    def _reference_rope(
        self, cache: QKVCache, rows: int, device: torch.device
    ) -> tuple[int, Tensor, Tensor]:
        """(rows, cos, sin), each (1, rows, 3, 1, d_h) with the v slot the identity (cos 1, sin 0).

        Rebuilt when the row count changes, as bd3lms rebuilds its tables (the first call of
        each block), and kept on the cache otherwise.
        """
        if cache.rope is None or cache.rope[0] != rows or cache.rope[1].device != device:
            cos, sin = self.rotary_emb.arange_tables(0, rows, device)  # (rows, 1, d_h)
            cos3 = torch.stack([cos, cos, torch.ones_like(cos)], dim=1)[None]
            sin3 = torch.stack([sin, sin, torch.zeros_like(sin)], dim=1)[None]
            cache.rope = (rows, cos3, sin3)
        return cache.rope

    # ---- bookkeeping --------------------------------------------------------------------------

    def num_parameters(self) -> int:
        """Total parameter count."""
        return sum(p.numel() for p in self.parameters())


def deterministic_init(model: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Fill every parameter with seeded, **non-zero** values (test fixtures, random-weight timing).

    Matrices get N(0, scale²/fan_in); norm weights 1 + 0.1·N(0, 1); biases 0.1·N(0, 1);
    the embedding N(0, 1). AdaLN and output weights end up non-zero, so cached-vs-uncached tests
    are not vacuous (a zero-initialised DiT returns all-zero logits).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.ndim >= 2 and not name.endswith("embedding"):
                p.copy_(z * scale / math.sqrt(p.shape[-1]))
            elif name.endswith("embedding"):
                p.copy_(z)
            elif "norm" in name:
                p.copy_(1 + 0.1 * z)
            else:
                p.copy_(0.1 * z)
    if isinstance(model, DiT):
        model._frozen = None
    return model
