"""Fake denoisers with known outputs, for distribution and call-pattern tests.

:class:`FixedLogitsModel` implements the denoiser surface the samplers use (``forward``,
``forward_cached``, ``forward_cached_reference``, ``new_kv_cache``, ``new_qkv_cache``,
``rotary_emb``, ``config``) but returns ``table[position]`` as the logits of every fed row,
whatever the tokens. So the law of every sampled token is known in closed form:

* diffusion samplers (MDLM, BD3-LM, Eso-LM): the token at position p ~ softmax(table[p]) with
  the mask logit removed (SUBS), whatever the order in which positions are decoded;
* AR: the token at position p ~ softmax(table[p − 1]) (the logits of the row fed at p − 1).

Positions are recovered from the call: ``forward`` takes ``positions`` (default 0 … n−1),
``forward_cached`` takes ``positions`` or ``rope`` (default ``start …``). The fake rotary
tables carry the position itself in ``cos`` (shape (…, n, 1, 1)), so samplers that slice
π-gathered tables (Eso-LM) still tell the fake which positions they fed.

Every call is appended to ``calls`` as (method, tokens fed, start, a copy of the fed tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from harness.model.network import DiTConfig, KVCache, QKVCache, block_causal_mask


class PositionRotary:
    """Rotary stand-in: ``tables(pos)`` returns (pos, pos) as float tensors (…, n, 1, 1)."""

    def tables(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        p = positions.to(torch.float64)[..., None, None]
        return p, p

    def arange_tables(self, start: int, n: int, device: Any) -> tuple[Tensor, Tensor]:
        return self.tables(torch.arange(start, start + n, device=device))


class FixedLogitsModel(nn.Module):
    """Denoiser whose logits depend on the position only.

    Args:
        table: (P, V) logits; row p is returned for every row fed at position p (P ≥ L).
        family: reported in ``config.family``.
        mask_index, bos_index, block_size: copied into ``config``.
    """

    def __init__(
        self,
        table: Tensor,
        family: str = "mdlm",
        *,
        mask_index: int | None = None,
        bos_index: int | None = None,
        block_size: int | None = None,
    ) -> None:
        super().__init__()
        P, V = table.shape
        self.config = DiTConfig(
            family=family,
            vocab_size=V,
            hidden_size=4,
            n_blocks=1,
            n_heads=1,
            cond_dim=4,
            model_length=P,
            mask_index=mask_index,
            bos_index=bos_index,
            block_size=block_size,
        )
        self.register_buffer("table", table.to(torch.float32).clone())
        self.rotary_emb = PositionRotary()
        self.calls: list[tuple[str, int, int, Tensor]] = []

    # ---- helpers --------------------------------------------------------------------------------

    def _logits(self, x: Tensor, pos: Tensor, rows: slice | int | None) -> Tensor:
        b, n = x.shape
        pos = pos.expand(b, n) if pos.dim() == 1 else pos
        out = self.table[pos.long()].clone()  # (b, n, V)
        if isinstance(rows, int):
            return out[:, -rows:] if rows > 0 else out[:, :0]
        return out if rows is None else out[:, rows]

    def freeze_conditioning(self) -> FixedLogitsModel:
        return self

    # ---- the denoiser surface -------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool | None = None,
        sigma: Tensor | None = None,
        logits: slice | int | None = None,
        kv_out: list | None = None,
    ) -> Tensor:
        self.calls.append(("forward", x.shape[1], 0, x.clone()))
        pos = positions if positions is not None else torch.arange(x.shape[1], device=x.device)
        return self._logits(x, pos, logits)

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
        n = x.shape[1]
        if start + n > cache.length:
            raise ValueError(f"cache has {cache.length} rows; this call needs {start + n}")
        self.calls.append(("forward_cached", n, start, x.clone()))
        if not return_logits:
            return None
        if rope is not None:
            pos = rope[0][..., 0, 0].round().long()
        elif positions is not None:
            pos = positions
        else:
            pos = torch.arange(start, start + n, device=x.device)
        return self._logits(x, pos, logits)

    def forward_cached_reference(
        self, x: Tensor, cache: QKVCache, *, start: int, return_logits: bool = True
    ) -> Tensor | None:
        n = x.shape[1]
        if start + n > cache.length:
            raise ValueError(f"cache has {cache.length} rows; this call needs {start + n}")
        self.calls.append(("forward_cached_reference", n, start, x.clone()))
        if not return_logits:
            return None
        return self._logits(x, torch.arange(start, start + n, device=x.device), None)

    block_causal_mask = staticmethod(block_causal_mask)  # the network's own (denoiser protocol)

    def new_kv_cache(
        self, batch_size: int, length: int, *, dtype: Any = None, device: Any = None
    ) -> KVCache:
        shape = (batch_size, 1, length, 2)
        dev = device or self.table.device
        return KVCache(k=[torch.zeros(shape, device=dev)], v=[torch.zeros(shape, device=dev)])

    def new_qkv_cache(
        self,
        batch_size: int,
        length: int,
        block_size: int,
        *,
        dtype: Any = None,
        device: Any = None,
    ) -> QKVCache:
        dev = torch.device(device) if device is not None else self.table.device
        return QKVCache(
            qkv=[torch.zeros((batch_size, length, 3), device=dev)],
            block_size=block_size,
            mask=block_causal_mask(length, block_size, dev),
        )


def position_table(n_pos: int, vocab: int, seed: int = 0, scale: float = 1.0) -> Tensor:
    """(n_pos, vocab) seeded logits with a large mask logit (last id), which SUBS must remove."""
    g = torch.Generator().manual_seed(seed)
    table = scale * torch.randn(n_pos, vocab, generator=g)
    table[:, -1] = 20.0
    return table


def token_law(table: Tensor, temperature: float = 1.0) -> Tensor:
    """(P, V) float64 law of a sampled token per row: softmax over every id but the mask (last)."""
    logits = table.to(torch.float64) / temperature
    logits[:, -1] = float("-inf")
    return torch.softmax(logits, dim=-1)
