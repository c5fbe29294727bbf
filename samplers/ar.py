"""Autoregressive sampling with a KV cache (``algorithms.md`` §3.6).

The canvas starts with a prefix of P tokens: the prompt when one is given, else BOS alone
(``model.config.bos_index``, P = 1). L − P tokens follow, one per call, NFE = L − P.

* ``kv_cache: true``: the first call (prefill) feeds the whole prefix x[0 … P−1], writes its K/V
  at cache rows 0 … P−1 (causal) and predicts x[P] from the last row; then step i feeds x[i]
  alone at position i, writes its K/V at cache row i and attends over rows 0 … i
  (``model.forward_cached``). The reference rotates at i + 1; a uniform offset leaves RoPE
  attention unchanged. Unconditionally the prefill is the one-token BOS call of before.
* ``kv_cache: false``: the uncached oracle, a full causal forward over x[0 … i] with the head on
  the last row only.

Both paths draw the same (b, V) float64 Gumbel noise per step, so in fp32 the same seed gives the
same tokens (the cache is exact up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from samplers.base import (
    SAMPLERS,
    CallRecord,
    PlanExecute,
    SamplerError,
    SampleResult,
    TopPConvention,
    check_common,
    check_config,
    check_family,
    check_prompt,
    numerics_problems,
    prompt_canvas,
    prompt_info,
    sample_tokens,
)
from samplers.lazytorch import lazy_torch, no_grad

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())


@dataclass(frozen=True)
class ARConfig:
    """Settings of the ``ar`` sampler.

    Attributes:
        kv_cache: feed one token per call against a K/V cache (false: the uncached oracle).
        temperature: divides the logits.
        top_p: nucleus mass in (0, 1]; 1 disables it.
        top_p_convention: ``hf`` (keep the crossing token) or ``strict``.
        profile: network-only timing (same calls, placeholder tokens, no sampling arithmetic).
    """

    kv_cache: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_p_convention: TopPConvention = "hf"
    profile: bool = False

    def problems(self) -> list[str]:
        """Every invalid value, as sentences."""
        return numerics_problems(self)


@dataclass
class ARPlan:
    """Untimed preparation.

    Attributes:
        template: (b, L) the prefix (prompt, or BOS at position 0), masks elsewhere (the
            profile-mode tokens).
        cache: a K/V cache of max(L − 1, 1) rows, or ``None`` without ``kv_cache``. Row i is
            written at step i before any read of it, so replays need no reset.
        prefix_len: P, the fixed prefix (1 for BOS alone).
        prompted: whether the prefix is a caller's prompt (for ``info["prompt_len"]``).
    """

    template: Tensor
    cache: Any
    prefix_len: int = 1
    prompted: bool = False


@SAMPLERS.register("ar")
class AR(PlanExecute):
    """Left-to-right sampling of L − P tokens after a prefix (the prompt, or BOS: P = 1).

    Args:
        config: an :class:`ARConfig`.

    Raises:
        ConfigError: listing every problem of ``config``.
    """

    name: ClassVar[str] = "ar"
    families: ClassVar[tuple[str, ...]] = ("ar",)
    config_class: ClassVar[type] = ARConfig

    def __init__(self, config: ARConfig | None = None) -> None:
        self.config = check_config(self.name, config or ARConfig())

    def cache_kind(self) -> str | None:
        """The cache this configuration keeps, for the analytic memory column.

        The K/V cache when ``kv_cache``.
        """
        return "kv" if self.config.kv_cache else None

    def plan(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> ARPlan:
        """Check the prefix (prompt, or BOS), build the canvas, allocate the cache.

        ``prompt``: (b, P) int64 prefix, or ``None`` for BOS alone (see ``samplers/base.py``).

        Raises:
            SamplerError: wrong family, bad sizes or prompt, or no prompt and a model without
                ``bos_index``.
        """
        check_family(self, model)
        check_common(batch_size, seq_len)
        dev = generator.device
        prompt = check_prompt(prompt, batch_size, seq_len, model.config, dev)
        if prompt is None:
            bos = model.config.bos_index
            if bos is None:
                raise SamplerError(
                    "sampler 'ar' puts BOS at position 0, but the model's 'bos_index' is None. "
                    "Set 'bos_index' in the checkpoint's config (GPT-2: 50256), load a "
                    "checkpoint that defines it, or pass a prompt."
                )
            prompt = torch.full((batch_size, 1), bos, dtype=torch.long, device=dev)
            prompted = False
        else:
            prompted = True
        x = prompt_canvas(prompt, batch_size, seq_len, model.config.mask_id, dev)
        cache = None
        if self.config.kv_cache:
            cache = model.new_kv_cache(batch_size, max(seq_len - 1, 1), device=dev)
        return ARPlan(template=x, cache=cache, prefix_len=prompt.shape[1], prompted=prompted)

    @no_grad
    def execute(self, model: Any, plan: ARPlan, *, generator: torch.Generator) -> SampleResult:
        """L − P steps: next-token logits at position i, then sample x[i + 1], i = P−1 … L−2."""
        x = plan.template.clone()  # (b, L)
        L, P = x.shape[1], plan.prefix_len
        mask_id = model.config.mask_id
        for i in range(P - 1, L - 1):
            logits = self.next_token_logits(model, x, i, plan.cache, P)  # (b, V)
            if not self.config.profile:
                x[:, i + 1] = self.draw(logits, mask_id, generator)
        n = L - P
        calls = self.call_records(L, P)
        return SampleResult(
            tokens=x,
            nfe_denoise=n,
            nfe_total=n,
            token_forwards=sum(fed for fed, *_ in calls),
            step_sizes=[1.0] * n,
            calls=calls,
            info={
                "nfe_expected": float(n),
                "nfe_expected_per_sequence": float(n),
                **prompt_info(P if plan.prompted else 0, L),
            },
        )

    def next_token_logits(
        self, model: Any, x: Tensor, i: int, cache: Any, prefix_len: int = 1
    ) -> Tensor:
        """Logits predicting x[i + 1] from x[0 … i]: (b, V).

        Cached: the call at i = P − 1 is the prefill (rows 0 … P−1 at once); later calls feed
        x[i] alone.
        """
        if cache is not None:
            lo = 0 if i == prefix_len - 1 else i
            out = model.forward_cached(x[:, lo : i + 1], cache, start=lo, causal=True, logits=1)
        else:
            out = model(x[:, : i + 1], is_causal=True, logits=1)
        return out[:, -1]  # (b, V)

    def draw(self, logits: Tensor, mask_id: int, generator: torch.Generator) -> Tensor:
        """SUBS, temperature, top-p, float64 Gumbel-max: (b, V) → (b,) int64."""
        cfg = self.config
        return sample_tokens(
            logits,
            mask_id,
            generator,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            convention=cfg.top_p_convention,
        )

    def call_records(self, seq_len: int, prefix_len: int = 1) -> list[CallRecord]:
        """Records for i = P − 1 … L − 2.

        Cached: the prefill (P, P, P, 1), then (1, 1, i + 1, 1); uncached: (i + 1, i + 1,
        i + 1, 1). With P = 1 (BOS) the prefill is (1, 1, 1, 1).
        """
        P = prefix_len
        if self.config.kv_cache:
            rest = [(1, 1, i + 1, 1) for i in range(P, seq_len - 1)]
            return ([(P, P, P, 1)] if P < seq_len else []) + rest
        return [(i + 1, i + 1, i + 1, 1) for i in range(P - 1, seq_len - 1)]

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """The same records as a run: AR's calls are fixed (prefix P = prompt_len, or 1)."""
        return self.call_records(seq_len, max(prompt_len, 1))
