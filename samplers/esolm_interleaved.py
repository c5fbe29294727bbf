"""Eso-LM block ("subcontext") interleaved sampler: far-apart positions decoded together.

``algorithms.md`` §3.5 (paper §5.2 and Suppl. E.10; reference ``sampling.subcontext_len``,
``sampling.subcontext_shuffle``). With S steps and g = L/S tokens per step, step r decodes the
group G_r = {r, r + S, r + 2S, …}. ``shuffle`` permutes the positions inside each group and the
order of the groups. π, the groups concatenated, is shared by the batch. With α0_eval < 1 only
the first ⌊S·α0⌋ groups are diffusion steps; the remaining positions are re-sorted ascending and
decoded one per step. The step loop is Eso-LM (B)'s (:func:`samplers.esolm.decode`).

Prompted: the groups are built over the n = L − P generated positions (S must divide L − P) and
follow the prompt 0 … P−1 in π; the prompt rides with the first call as in ``esolm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from samplers.base import (
    SAMPLERS,
    CallRecord,
    PlanExecute,
    SamplerError,
    SampleResult,
    check_common,
    check_config,
    check_family,
    check_prompt,
    numerics_problems,
)
from samplers.esolm import EsoPlan, decode, prepare, step_calls
from samplers.lazytorch import lazy_torch, no_grad

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())


@dataclass(frozen=True)
class EsoLMBlockConfig:
    """Interleaved Eso-LM sampler settings.

    Attributes:
        num_steps: S, the number of groups; must divide L (g = L/S tokens per diffusion step,
            the paper's "parallelism").
        alpha0_eval: α0; the first ⌊S·α0⌋ groups are decoded by diffusion, the other
            L − ⌊S·α0⌋·g positions one per step, left to right.
        shuffle: permute positions inside each group and the order of the groups (the
            reference's ``subcontext_shuffle``; its scripts use ``True``).
        kv_cache: cached loop (``true``) or the uncached oracle (``false``).
        temperature: divides the logits before sampling.
        top_p: nucleus mass in (0, 1]; 1 disables nucleus filtering.
        top_p_convention: ``hf`` or ``strict``.
        profile: network-only timing: the same calls and shapes on placeholder tokens.
    """

    num_steps: int = 16
    alpha0_eval: float = 1.0
    shuffle: bool = True
    kv_cache: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_p_convention: Literal["hf", "strict"] = "hf"
    profile: bool = False

    def problems(self) -> list[str]:
        """Every problem with these values, as sentences (empty when valid)."""
        out = list(numerics_problems(self))
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            out.append(f"'num_steps' is {self.num_steps!r}; it must be an integer >= 1.")
        if not 0.0 <= self.alpha0_eval <= 1.0:
            out.append(f"'alpha0_eval' is {self.alpha0_eval}; it must lie in [0, 1].")
        return out


def interleaved_order(
    seq_len: int, num_groups: int, shuffle: bool, generator: torch.Generator
) -> Tensor:
    """π = G_0, G_1, …, G_{S−1} with G_r = {r, r+S, …}; optionally shuffled (shared by the batch).

    Returns:
        (L,) int64 on ``generator``'s device.
    """
    dev = generator.device
    g = seq_len // num_groups
    groups = torch.arange(seq_len, device=dev).view(g, num_groups).t()  # (S, g): row r = G_r
    if shuffle:
        inside = torch.rand((num_groups, g), generator=generator, device=dev).argsort(dim=-1)
        groups = torch.gather(groups, 1, inside)
        groups = groups[torch.randperm(num_groups, generator=generator, device=dev)]
    return groups.reshape(-1)


def interleaved_steps(seq_len: int, num_groups: int, alpha0: float) -> tuple[list[int], int]:
    """K = [g] × ⌊S·α0⌋ followed by (L − n_MDM) ones; returns (K, n_MDM)."""
    g = seq_len // num_groups
    n_diff = math.floor(num_groups * alpha0)
    n_mdm = n_diff * g
    return [g] * n_diff + [1] * (seq_len - n_mdm), n_mdm


@SAMPLERS.register("esolm_block")
class EsoLMBlockSampler(PlanExecute):
    """Eso-LM (B) decoding interleaved groups of far-apart positions (the paper's §5.2)."""

    name: ClassVar[str] = "esolm_block"
    families: ClassVar[tuple[str, ...]] = ("esolm",)
    config_class: ClassVar[type] = EsoLMBlockConfig

    def __init__(self, config: EsoLMBlockConfig | None = None) -> None:
        self.config = check_config(self.name, config or EsoLMBlockConfig())

    def cache_kind(self) -> str | None:
        """The cache this configuration keeps, for the analytic memory column.

        The K/V cache when ``kv_cache``.
        """
        return "kv" if self.config.kv_cache else None

    def _check_length(self, seq_len: int, prompt_len: int = 0) -> None:
        S, n = self.config.num_steps, seq_len - prompt_len
        if S > n or n % S:
            if prompt_len:
                raise SamplerError(
                    f"sampler 'esolm_block': 'num_steps' {S} must divide the generated length "
                    f"seq_len − prompt length = {seq_len} − {prompt_len} = {n} (g = (L − P)/S "
                    f"tokens per step). Pick num_steps among the divisors of {n}, or a seq_len "
                    f"that makes L − P a multiple of {S}."
                )
            raise SamplerError(
                f"sampler 'esolm_block': 'num_steps' {S} must divide seq_len {seq_len} "
                f"(g = L/S tokens per step). Pick num_steps among the divisors of {seq_len}, "
                "e.g. a power of two for L = 1024."
            )

    @no_grad
    def plan(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> EsoPlan:
        """Build π (shared by the batch) and K, gather rotary, allocate the cache (untimed).

        ``prompt``: (b, P) int64 clean prefix, first in π, or ``None`` (``samplers/base.py``).

        Raises:
            SamplerError: wrong model family, sizes < 1, a bad prompt, or num_steps not
                dividing the generated length L − P.
        """
        check_family(self, model)
        check_common(batch_size, seq_len)
        prompt = check_prompt(prompt, batch_size, seq_len, model.config, generator.device)
        P = 0 if prompt is None else prompt.shape[1]
        self._check_length(seq_len, P)
        cfg, n = self.config, seq_len - P
        order = interleaved_order(n, cfg.num_steps, cfg.shuffle, generator) + P
        steps, n_mdm = interleaved_steps(n, cfg.num_steps, cfg.alpha0_eval)
        order[n_mdm:] = order[n_mdm:].sort().values
        if P:
            order = torch.cat([torch.arange(P, device=order.device), order])
        return prepare(
            model,
            order[None].expand(batch_size, seq_len),
            steps,
            n_mdm,
            kv_cache=cfg.kv_cache,
            nfe_expected=float(len(steps)),
            info={"alpha0_eval": cfg.alpha0_eval, "shuffle": cfg.shuffle},
            prompt=prompt,
        )

    @no_grad
    def execute(self, model: Any, plan: EsoPlan, *, generator: torch.Generator) -> SampleResult:
        """The timed loop (shared with ``esolm``); replayable."""
        return decode(model, plan, self.config, generator)

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """Exact: K does not depend on random draws."""
        self._check_length(seq_len, prompt_len)
        cfg = self.config
        steps, _ = interleaved_steps(seq_len - prompt_len, cfg.num_steps, cfg.alpha0_eval)
        return step_calls(steps, seq_len, cfg.kv_cache, prompt_len)
