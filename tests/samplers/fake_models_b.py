"""Hand-built denoisers with known outputs, for the Eso-LM and BD3-LM sampler tests.

:class:`FixedLogitsModel` returns logits that depend only on each fed row's *natural* position
(never on the tokens or the attention pattern), so the sampled distribution is known exactly:
every generated position r draws from softmax(table[r]) with the mask excluded. It implements
the denoiser methods the samplers call (``forward``, ``forward_cached``,
``forward_cached_reference``, ``new_kv_cache``, ``new_qkv_cache``, ``rotary_emb.tables``,
``config``) and records every call, so tests can also check what was fed.

Positions reach it the way they reach the real DiT: ``positions=`` for the uncached forward,
``rope=`` slices of ``rotary_emb.tables(π)`` for Eso-LM (here the "tables" carry the positions
themselves), and the natural range ``start … start+n−1`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class FakeConfig:
    """The config fields the samplers read."""

    family: str
    vocab_size: int
    bos_index: int | None = None
    block_size: int | None = None
    mask_index: int | None = None

    @property
    def mask_id(self) -> int:
        """The mask token m (V − 1 unless set)."""
        return self.vocab_size - 1 if self.mask_index is None else self.mask_index


@dataclass
class FakeCache:
    """Stands in for ``KVCache``/``QKVCache``: counts resets, holds nothing."""

    batch_size: int
    length: int
    resets: int = 0

    def reset(self) -> None:
        """Count the reset."""
        self.resets += 1


class PositionTables:
    """``rotary_emb`` stand-in: ``tables(pos)`` returns the positions as (…, n, 1, 1) floats."""

    def tables(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(…, n) int → two (…, n, 1, 1) float tensors holding the positions."""
        p = positions.to(torch.float64)[..., None, None]
        return p, p


@dataclass
class Call:
    """One recorded network call."""

    method: str
    fed: Tensor  # (b, n) tokens fed
    positions: Tensor  # (b, n) natural positions of the fed rows
    start: int | None
    head_rows: int  # rows that got logits


@dataclass
class FixedLogitsModel:
    """Logits table[position] for every fed row, whatever the input.

    Args:
        config: family, vocabulary, BOS, block size.
        table: (L_max, V) or (V,) float logits; a (V,) table is the same for every position.
    """

    config: FakeConfig
    table: Tensor
    calls: list[Call] = field(default_factory=list)
    rotary_emb: PositionTables = field(default_factory=PositionTables)

    def logits_at(self, x: Tensor, pos: Tensor) -> Tensor:
        """(b, n, V) logits of the fed rows x (b, n) at natural positions pos (b, n)."""
        table = self.table if self.table.dim() == 2 else self.table[None]
        idx = pos if self.table.dim() == 2 else torch.zeros_like(pos)
        return table[idx]

    def _out(self, x: Tensor, pos: Tensor, method: str, start: int | None, rows: Any) -> Tensor:
        b, n = x.shape
        pos = pos.expand(b, n) if pos.dim() == 2 else pos[None].expand(b, n)
        out = self.logits_at(x, pos)  # (b, n, V)
        if isinstance(rows, int):
            out = out[:, -rows:] if rows > 0 else out[:, :0]
        elif isinstance(rows, slice):
            out = out[:, rows]
        self.calls.append(Call(method, x.clone(), pos.clone(), start, out.shape[1]))
        return out

    def forward(
        self,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool | None = None,
        logits: int | slice | None = None,
        **_: Any,
    ) -> Tensor:
        """Uncached call: positions default to 0 … n−1; ``logits`` = last k rows or a slice."""
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        return self._out(x, positions, "forward", None, logits)

    def __call__(self, x: Tensor, **kw: Any) -> Tensor:
        """``model(x, ...)`` is :meth:`forward`, as on an ``nn.Module``."""
        return self.forward(x, **kw)

    def forward_cached(
        self,
        x: Tensor,
        cache: FakeCache,
        *,
        start: int,
        causal: bool,
        positions: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        logits: int | None = None,
        return_logits: bool = True,
        attn_mask: Tensor | None = None,
    ) -> Tensor | None:
        """Cached call: positions from ``rope`` (Eso-LM), ``positions`` or start … start+n−1."""
        n = x.shape[1]
        if start + n > cache.length:
            raise ValueError(f"cache has {cache.length} rows; this call needs {start + n}")
        if rope is not None:
            pos = rope[0][..., 0, 0].round().long()
        elif positions is not None:
            pos = positions
        else:
            pos = torch.arange(start, start + n, device=x.device)
        out = self._out(x, pos, "forward_cached", start, logits if return_logits else 0)
        return out if return_logits else None

    def forward_cached_reference(
        self, x: Tensor, cache: FakeCache, *, start: int, return_logits: bool = True
    ) -> Tensor | None:
        """Reference-style block call: natural positions start … start+n−1."""
        pos = torch.arange(start, start + x.shape[1], device=x.device)
        out = self._out(x, pos, "forward_cached_reference", start, None if return_logits else 0)
        return out if return_logits else None

    @staticmethod
    def block_causal_mask(n: int, block_size: int, device: Any = None) -> Tensor:
        """Denoiser protocol's BD3-LM mask: key k visible to query q iff block(k) <= block(q)."""
        blk = torch.arange(n, device=device) // block_size
        return blk[None, :] <= blk[:, None]

    def new_kv_cache(self, batch_size: int, length: int, **_: Any) -> FakeCache:
        """A cache stand-in of ``length`` rows."""
        return FakeCache(batch_size, length)

    def new_qkv_cache(self, batch_size: int, length: int, block_size: int, **_: Any) -> FakeCache:
        """A QKV cache stand-in of ``length`` rows."""
        return FakeCache(batch_size, length)


@dataclass
class CopyPromptModel(FixedLogitsModel):
    """A model whose output is determined by the prompt: position q copies position q mod P.

    The fake remembers every clean token fed so far at its natural position (what a cache, or a
    full-canvas forward, lets the real network see). The row fed at position p gets logits
    ``height`` on the token seen at position (p + shift) mod ``period`` and 0 elsewhere, so the
    token sampled at q is prompt[q mod P] with probability ≥ 1 − V·e^−height when
    ``period`` = P (``shift`` = 1 for AR, whose row p predicts p + 1). Raises AssertionError if
    that source position was never fed clean: the prompt was not visible to the call.
    """

    period: int = 1
    shift: int = 0
    height: float = 60.0
    seen: Tensor | None = None

    def logits_at(self, x: Tensor, pos: Tensor) -> Tensor:
        """Record the clean fed tokens, then peak every row on its source position's token."""
        b, n = x.shape
        if self.seen is None:
            self.seen = torch.full((b, self.table.shape[0]), -1, dtype=torch.long)
        pos = pos.long()
        clean = x != self.config.mask_id
        self.seen.scatter_(1, pos, torch.where(clean, x, self.seen.gather(1, pos)))
        src = self.seen.gather(1, (pos + self.shift) % self.period)  # (b, n)
        assert bool((src >= 0).all()), "a call could not see the prompt position it copies"
        out = torch.zeros(b, n, self.config.vocab_size)
        return out.scatter_(2, src[..., None], self.height)


def copy_model(family: str, vocab_size: int, seq_len: int, period: int) -> CopyPromptModel:
    """A :class:`CopyPromptModel` copying with period P (shift 1 for the ``ar`` family)."""
    cfg = FakeConfig(family, vocab_size)
    table = torch.zeros(seq_len, vocab_size)
    return CopyPromptModel(cfg, table, period=period, shift=int(family == "ar"))


def peaked_table(seq_len: int, vocab_size: int, height: float = 60.0) -> Tensor:
    """(L, V) logits putting all but ~e^(−60) of the mass on token r mod (V − 1) at position r."""
    table = torch.zeros(seq_len, vocab_size)
    table[torch.arange(seq_len), torch.arange(seq_len) % (vocab_size - 1)] = height
    return table


def fixed_model(
    family: str,
    table: Tensor,
    *,
    bos_index: int | None = None,
    block_size: int | None = None,
) -> FixedLogitsModel:
    """A :class:`FixedLogitsModel` whose vocabulary size is the table's last dimension."""
    cfg = FakeConfig(family, table.shape[-1], bos_index=bos_index, block_size=block_size)
    return FixedLogitsModel(cfg, table)


class Recorder:
    """Wraps a real DiT: records each call's method, fed shape, key arguments and logits."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.log: list[tuple[Any, ...]] = []
        self.logits: list[Tensor] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def _keep(self, method: str, x: Tensor, kw: dict[str, Any], out: Tensor | None) -> Any:
        keys = ("start", "causal", "logits", "return_logits", "is_causal")
        self.log.append((method, tuple(x.shape), tuple((k, kw.get(k)) for k in keys)))
        if out is not None:
            self.logits.append(out.detach().clone())
        return out

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        """Recorded ``DiT.forward``."""
        return self._keep("forward", x, kw, self.model.forward(x, **kw))

    def forward_cached(self, x: Tensor, cache: Any, **kw: Any) -> Tensor | None:
        """Recorded ``DiT.forward_cached``."""
        return self._keep("forward_cached", x, kw, self.model.forward_cached(x, cache, **kw))

    def forward_cached_reference(self, x: Tensor, cache: Any, **kw: Any) -> Tensor | None:
        """Recorded ``DiT.forward_cached_reference``."""
        out = self.model.forward_cached_reference(x, cache, **kw)
        return self._keep("forward_cached_reference", x, kw, out)
