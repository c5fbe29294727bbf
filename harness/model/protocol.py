"""The denoiser protocol: all that a sampler may ask of a network.

Samplers import nothing from ``harness``; they call a model through the members below, which
:class:`harness.model.network.DiT` implements (and the test fakes in ``tests/samplers/``, and
adapters to other model families). Shapes: b batch rows, n fed tokens, L the canvas, V the
vocabulary including the mask token.

Configuration (``model.config``):
    ``family`` (``mdlm`` | ``bd3lm`` | ``esolm`` | ``ar``), ``mask_id``, ``bos_index``,
    ``eos_index``, ``vocab_size``, ``model_length``, ``block_size``.

Calls (raw logits; SUBS parameterisation and sampling are the sampler's job):
    ``model(x, positions=None, attn_mask=None, is_causal=None, logits=None)``:
        uncached forward, (b, n) → (b, n', V); ``logits=k`` computes the last k rows only,
        ``logits=slice(s, e)`` rows s … e−1 only (``mdlm_blocks``: the current block's rows).
    ``model.forward_cached(x, cache, start=, causal=, positions=|rope=, logits=,
    return_logits=)``: writes the fed rows' K/V at cache rows [start, start+n) and attends
        over [0, start+n); (b, n) → (b, n', V) or None.
    ``model.forward_cached_reference(x, qkv_cache, start=, return_logits=)``: the
        reference-style BD3-LM block call (every cached row re-attends as a query).
    ``model.new_kv_cache(b, L)``, ``model.new_qkv_cache(b, L, block_size)``: zeroed caches.
    ``model.block_causal_mask(n, block_size, device)``: (n, n) bool, BD3-LM's clean pattern.
    ``model.rotary_emb.tables(positions)``: rotary (cos, sin) gathered at positions (Eso-LM).

Prompts (``samplers/base.py``): a prompt is ordinary token ids at positions [0, P) of the canvas;
the denoiser needs no extra member for it. What the calls look like with a prompt:
    full-canvas samplers (``mdlm``, ``mdlm_first_hitting``, ``mdlm_blocks``) feed the whole
        canvas [prompt ; tokens] every call;
    ``ar`` with a cache: one prefill ``forward_cached(x[:, :P], start=0, causal=True, logits=1)``,
        then one token per call;
    ``bd3lm`` cached: one prefill over the ⌊P/L′⌋ whole prompt blocks,
        ``forward_cached(x[:, :j0·L′], start=0, causal=False, attn_mask=<block-causal>,
        return_logits=False)`` (or ``forward_cached_reference(..., start=0,
        return_logits=False)``), then block calls from block j0;
    ``esolm`` / ``esolm_block`` cached: the first call feeds the P prompt tokens followed by the
        first step's masks (``causal=True``, rope gathered at π with π[:P] = 0 … P−1).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Denoiser(Protocol):
    """What samplers call; see the module docstring for each member's contract."""

    config: Any
    rotary_emb: Any

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        """Uncached forward: (b, n) token ids → (b, n', V) raw logits."""

    def forward_cached(self, x: Any, cache: Any, **kwargs: Any) -> Any:
        """A cached call against a K/V cache."""

    def forward_cached_reference(self, x: Any, qkv_cache: Any, **kwargs: Any) -> Any:
        """A reference-style (bd3lms) cached block call."""

    def new_kv_cache(self, batch_size: int, length: int, **kwargs: Any) -> Any:
        """A zeroed K/V cache of ``length`` rows."""

    def new_qkv_cache(self, batch_size: int, length: int, block_size: int, **kwargs: Any) -> Any:
        """A zeroed reference-style QKV cache."""

    def block_causal_mask(self, n: int, block_size: int, device: Any = None) -> Any:
        """(n, n) bool: key k visible to query q iff block(k) <= block(q)."""
