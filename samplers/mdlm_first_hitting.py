"""MDLM first-hitting sampler: exactly one token per network call (``algorithms.md`` §3.2).

Zheng et al., arXiv 2409.02908: under the linear schedule with n masks left at time t, the next
unmasking event happens at τ = t·u^(1/n) and unmasks exactly one uniformly chosen masked token.
With a time-agnostic denoiser (σ_c = 0) the event times never reach the network, so only the
*order* matters: a uniformly random permutation of the positions, drawn in :meth:`plan`. The
times are not drawn at all.

Batched: every row unmasks one position per call (its own order), so NFE = L exactly at any batch
size. Each call is a full-length bidirectional forward; the token is drawn with float64 Gumbel-max
over the (b, V) rows of the chosen positions only.

Prompted: the order is a uniform permutation of the generated positions P … L − 1 only, so
NFE = L − P; every call still feeds the whole canvas [prompt ; current tokens].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from samplers.base import (
    SAMPLERS,
    CallRecord,
    PlanExecute,
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
class FirstHittingConfig:
    """Settings of the ``mdlm_first_hitting`` sampler.

    Attributes:
        temperature: divides the logits.
        top_p: nucleus mass in (0, 1]; 1 disables it.
        top_p_convention: ``hf`` (keep the crossing token) or ``strict``.
        profile: network-only timing (same calls, placeholder tokens, no sampling arithmetic).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_p_convention: TopPConvention = "hf"
    profile: bool = False

    def problems(self) -> list[str]:
        """Every invalid value, as sentences."""
        return numerics_problems(self)


@dataclass
class FirstHittingPlan:
    """Untimed preparation: the canvas and each row's unmasking order.

    Attributes:
        placeholder: (b, L) the starting canvas, [prompt ; masks] (all masks without a prompt).
        order: (b, L − P) int64; ``order[:, j]`` is the position each row unmasks at call j.
    """

    placeholder: Tensor
    order: Tensor

    @property
    def prompt_len(self) -> int:
        """P, the fixed prefix (0 without a prompt)."""
        return self.placeholder.shape[1] - self.order.shape[1]


@SAMPLERS.register("mdlm_first_hitting")
class MDLMFirstHitting(PlanExecute):
    """One uniformly chosen masked position per row per call; NFE = L.

    Args:
        config: a :class:`FirstHittingConfig`.

    Raises:
        ConfigError: listing every problem of ``config``.
    """

    name: ClassVar[str] = "mdlm_first_hitting"
    families: ClassVar[tuple[str, ...]] = ("mdlm",)
    config_class: ClassVar[type] = FirstHittingConfig

    def __init__(self, config: FirstHittingConfig | None = None) -> None:
        self.config = check_config(self.name, config or FirstHittingConfig())

    def cache_kind(self) -> str | None:
        """The cache this configuration keeps, for the analytic memory column.

        None: every call recomputes p_x0.
        """
        return None

    def plan(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> FirstHittingPlan:
        """Draw each row's unmasking order, a uniform permutation of P … L−1.

        ``prompt``: (b, P) int64 fixed prefix, or ``None`` (P = 0; see ``samplers/base.py``).
        """
        check_family(self, model)
        check_common(batch_size, seq_len)
        dev = generator.device
        prompt = check_prompt(prompt, batch_size, seq_len, model.config, dev)
        P = 0 if prompt is None else prompt.shape[1]
        keys = torch.rand((batch_size, seq_len - P), generator=generator, device=dev)
        return FirstHittingPlan(
            placeholder=prompt_canvas(prompt, batch_size, seq_len, model.config.mask_id, dev),
            order=torch.argsort(keys, dim=-1) + P,  # (b, L − P)
        )

    @no_grad
    def execute(
        self, model: Any, plan: FirstHittingPlan, *, generator: torch.Generator
    ) -> SampleResult:
        """L − P calls; call j commits position ``order[:, j]`` of every row."""
        x = plan.placeholder.clone()  # (b, L)
        b, L = x.shape
        n = plan.order.shape[1]  # L − P
        rows = torch.arange(b, device=x.device)
        for j in range(n):
            logits = model(x)  # (b, L, V)
            if not self.config.profile:
                pos = plan.order[:, j]  # (b,)
                x[rows, pos] = self.draw(logits[rows, pos], model.config.mask_id, generator)
        return SampleResult(
            tokens=x,
            nfe_denoise=n,
            nfe_total=n,
            token_forwards=n * L,
            step_sizes=[1.0] * n,
            calls=[(L, L, L, L)] * n,
            info={
                "nfe_expected": float(n),
                "nfe_expected_per_sequence": float(n),
                **prompt_info(plan.prompt_len, L),
            },
        )

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

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """L − P full-length calls."""
        L = seq_len
        return [(L, L, L, L)] * (L - prompt_len)
