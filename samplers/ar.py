"""Autoregressive sampling with a KV cache (``algorithms.md`` §3.6).

x[0] = BOS (``model.config.bos_index``); L − 1 tokens follow, one per call, NFE = L − 1.

* ``kv_cache: true``: step i feeds x[i] alone at position i, writes its K/V at cache row i and
  attends over rows 0 … i (``model.forward_cached``). The reference rotates at i + 1; a uniform
  offset leaves RoPE attention unchanged.
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
    SamplerError,
    SampleResult,
    TopPConvention,
    check_common,
    check_config,
    check_family,
    numerics_problems,
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
        template: (b, L) BOS at position 0, masks elsewhere (the profile-mode tokens).
        cache: a K/V cache of max(L − 1, 1) rows, or ``None`` without ``kv_cache``. Row i is
            written at step i before any read of it, so replays need no reset.
    """

    template: Tensor
    cache: Any


@SAMPLERS.register("ar")
class AR:
    """Left-to-right sampling of L − 1 tokens after BOS.

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
        self, model: Any, *, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> ARPlan:
        """Check BOS, build the canvas, allocate the cache.

        Raises:
            SamplerError: wrong family, bad sizes, or a model without ``bos_index``.
        """
        check_family(self, model)
        check_common(batch_size, seq_len)
        bos = model.config.bos_index
        if bos is None:
            raise SamplerError(
                "sampler 'ar' puts BOS at position 0, but the model's 'bos_index' is None. Set "
                "'bos_index' in the checkpoint's config (GPT-2: 50256), or load a checkpoint "
                "that defines it."
            )
        dev = generator.device
        x = torch.full((batch_size, seq_len), model.config.mask_id, dtype=torch.long, device=dev)
        x[:, 0] = bos
        cache = None
        if self.config.kv_cache:
            cache = model.new_kv_cache(batch_size, max(seq_len - 1, 1), device=dev)
        return ARPlan(template=x, cache=cache)

    @no_grad
    def execute(self, model: Any, plan: ARPlan, *, generator: torch.Generator) -> SampleResult:
        """L − 1 steps: next-token logits at position i, then sample x[i + 1]."""
        x = plan.template.clone()  # (b, L)
        L = x.shape[1]
        mask_id = model.config.mask_id
        for i in range(L - 1):
            logits = self.next_token_logits(model, x, i, plan.cache)  # (b, V)
            if not self.config.profile:
                x[:, i + 1] = self.draw(logits, mask_id, generator)
        n = L - 1
        return SampleResult(
            tokens=x,
            nfe_denoise=n,
            nfe_total=n,
            token_forwards=sum(fed for fed, *_ in self.call_records(L)),
            step_sizes=[1.0] * n,
            calls=self.call_records(L),
            info={"nfe_expected": float(n), "nfe_expected_per_sequence": float(n)},
        )

    def next_token_logits(self, model: Any, x: Tensor, i: int, cache: Any) -> Tensor:
        """Logits predicting x[i + 1] from x[0 … i]: (b, V)."""
        if cache is not None:
            out = model.forward_cached(x[:, i : i + 1], cache, start=i, causal=True)
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

    def call_records(self, seq_len: int) -> list[CallRecord]:
        """Cached: (1, 1, i + 1, 1); uncached: (i + 1, i + 1, i + 1, 1) for i = 0 … L − 2."""
        if self.config.kv_cache:
            return [(1, 1, i + 1, 1) for i in range(seq_len - 1)]
        return [(i + 1, i + 1, i + 1, 1) for i in range(seq_len - 1)]

    def sample(
        self, model: Any, *, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> SampleResult:
        """``plan`` then ``execute``."""
        plan = self.plan(model, batch_size=batch_size, seq_len=seq_len, generator=generator)
        return self.execute(model, plan, generator=generator)

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int
    ) -> list[CallRecord]:
        """The same records as a run: AR's calls are fixed."""
        return self.call_records(seq_len)
