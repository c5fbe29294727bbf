"""MDLM ancestral sampling with the no-change cache (``algorithms.md`` §3.1).

Grid t_i = 1 − i/T, s_i = t_i − 1/T (i = 0 … T−1). A token still masked at t_i stays masked with
probability r = (1 − α_s)/(1 − α_t) (MDLM, Sahoo et al. 2024, eq. 7 posterior), otherwise it
takes a token from p_θ(x0 | x_t). At the last step s = 0, so r = 0 and every mask is filled; no
final greedy pass. Because the denoiser is time-agnostic, a step that changes no token anywhere in
the batch leaves p(x0) unchanged and reuses it without a forward (the no-change cache).

How the draws are arranged. Which tokens unmask at which step does not depend on the model, so
:meth:`MDLMAncestral.plan` draws it up front, per row: ``schedule.counts(L, T)`` gives the tokens
unmasked at each step (for ``loglinear``/``cosine`` the binomial walk, whose per-row law is
exactly that of L independent per-token stay/unmask draws with probability r). The policy then
chooses *which* masked positions take the step's k tokens (``random`` = uniform, the ancestral
rule). So the grid steps that change nothing are known in advance and :meth:`execute` loops only
over the steps that call the network; the T-step Python loop of the reference is outside the
timer, as its profile simulation is in ``algorithms.md`` §5. Each call proposes a token at every
position with float64 Gumbel-max over (b, L, V) and commits the selected ones; the reference
instead draws (b, L, V) noise at every one of the T steps (same law, more noise).

NFE: E[NFE] = T·(1 − (1 − 1/T)^(b·L)) for the batch under ``loglinear`` (``info["nfe_expected"]``)
and T·(1 − (1 − 1/T)^L) per sequence as the paper charged it. Profile mode replays the
single-sequence simulation (row 0 of the plan) on placeholder tokens.

With ``policy: confidence``, ``margin``, ``entropy`` or ``threshold`` the positions (and, for
``threshold``, the counts) depend on the model: the same API carries LLaDA/Fast-dLLM-style
samplers on an MDLM denoiser (their semi-autoregressive block loop is ``mdlm_blocks``).

Prompted: the canvas is [prompt ; L − P masks]. The schedule draws counts for the L − P
generated positions only (so NFE and its expectation use n = L − P); prompt positions are never
masked, so no policy ever selects them. Every call still feeds the whole canvas (b, L).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    gumbel_argmax,
    numerics_problems,
    prompt_canvas,
    prompt_info,
    sample_tokens,
    subs_log_probs,
    top_p_filter,
)
from samplers.lazytorch import lazy_torch, no_grad
from samplers.schedules import (
    POLICIES,
    SCHEDULES,
    build,
    build_problems,
    policy_keys,
    step_probabilities,
)

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())


@dataclass(frozen=True)
class MDLMConfig:
    """Settings of the ``mdlm`` sampler.

    Attributes:
        num_steps: T, grid steps (the paper: 16 … 4096; 10⁶ approximates first-hitting).
        schedule: α_t schedule (``SCHEDULES``): how many tokens each step unmasks.
        policy: unmasking policy (``POLICIES``): which masked positions take them.
        policy_threshold: τ for ``policy: threshold`` (default 0.9); unset for other policies.
        temperature: divides the logits.
        top_p: nucleus mass in (0, 1]; 1 disables it.
        top_p_convention: ``hf`` (keep the crossing token) or ``strict``.
        profile: network-only timing (same calls, placeholder tokens, no sampling arithmetic).
    """

    num_steps: int = 128
    schedule: str = "loglinear"
    policy: str = "random"
    policy_threshold: float | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_p_convention: TopPConvention = "hf"
    profile: bool = False

    def problems(self) -> list[str]:
        """Every invalid value or combination, as sentences."""
        out = []
        if self.num_steps < 1:
            out.append(
                f"'num_steps' is {self.num_steps}; it must be >= 1 (the paper uses 16 … 4096)."
            )
        out += build_problems(SCHEDULES, "schedule", self.schedule)
        policy_problems = build_problems(
            POLICIES, "policy", self.policy, threshold=self.policy_threshold
        )
        out += policy_problems
        if self.profile and not policy_problems and POLICIES.get(self.policy).adaptive:
            out.append(
                f"'profile' is true but policy '{self.policy}' is adaptive: its calls depend on "
                "the model, so network-only timing would not replay them. Set profile: false, or "
                "pick a non-adaptive policy."
            )
        return out + numerics_problems(self)


@dataclass
class MDLMPlan:
    """What :meth:`MDLMAncestral.plan` prepares (untimed; replayable).

    Attributes:
        placeholder: (b, L) the starting canvas, [prompt ; masks] (all masks without a prompt);
            also the profile-mode input.
        commit_step: (b, L − P) int64, sorted per row: the grid step of each of the row's
            L − P commits.
        steps: grid steps that call the network (every step for adaptive policies).
        step_sizes: mean over the batch of tokens committed at each call (non-adaptive).
        profile_steps: row 0's non-empty steps, the single-sequence simulation of profile mode.
        info: analytic NFE and the profile simulation count.
    """

    placeholder: Tensor
    commit_step: Tensor
    steps: list[int] | range
    step_sizes: list[float]
    profile_steps: list[int]
    info: dict[str, Any] = field(default_factory=dict)


def expected_nfe(schedule: Any, n_tokens: int, num_steps: int, batch_size: int) -> float:
    """E[number of grid steps at which at least one of the b·n tokens unmasks].

    Σ_i 1 − (1 − P_i)^(b·n) with P_i from :func:`step_probabilities`; for ``loglinear``
    P_i = 1/T, giving T·(1 − (1 − 1/T)^(b·n)). Deterministic schedules: the non-zero counts.
    """
    if getattr(schedule, "deterministic", False):
        counts = schedule.counts(n_tokens, num_steps, torch.Generator())
        return float(sum(c > 0 for c in counts))
    p = step_probabilities(schedule, num_steps)[:-1]
    return float((-torch.expm1(batch_size * n_tokens * torch.log1p(-p))).sum())


@SAMPLERS.register("mdlm")
class MDLMAncestral(PlanExecute):
    """MDLM ancestral sampler over T grid steps with the no-change cache.

    Args:
        config: an :class:`MDLMConfig` (default: T = 128, loglinear, random).

    Raises:
        ConfigError: listing every problem of ``config``.
    """

    name: ClassVar[str] = "mdlm"
    families: ClassVar[tuple[str, ...]] = ("mdlm",)
    config_class: ClassVar[type] = MDLMConfig

    def __init__(self, config: MDLMConfig | None = None) -> None:
        self.config = check_config(self.name, config or MDLMConfig())
        self.schedule = build(SCHEDULES, "schedule", self.config.schedule)
        self.policy = build(
            POLICIES, "policy", self.config.policy, threshold=self.config.policy_threshold
        )

    # ---- plan (untimed) ----------------------------------------------------------------------

    def cache_kind(self) -> str | None:
        """The cache this configuration keeps, for the analytic memory column.

        The p_x0 no-change cache.
        """
        return "px0"

    def plan(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> MDLMPlan:
        """Draw every row's per-step counts and derive the calling steps (see module docstring).

        ``prompt``: (b, P) int64 fixed prefix, or ``None`` (see ``samplers/base.py``).
        """
        check_family(self, model)
        check_common(batch_size, seq_len)
        dev = generator.device
        prompt = check_prompt(prompt, batch_size, seq_len, model.config, dev)
        P = 0 if prompt is None else prompt.shape[1]
        b, L, T = batch_size, seq_len, self.config.num_steps
        n = L - P  # generated positions: the schedule's tokens
        commit_step = torch.stack([self.draw_commit_steps(n, T, generator) for _ in range(b)])
        steps, per_step = torch.unique(commit_step, return_counts=True)
        adaptive = self.policy.adaptive
        info = {
            "nfe_expected": float("nan") if adaptive else expected_nfe(self.schedule, n, T, b),
            "nfe_expected_per_sequence": (
                float("nan") if adaptive else expected_nfe(self.schedule, n, T, 1)
            ),
            **prompt_info(P, L),
        }
        profile_steps = torch.unique(commit_step[0]).tolist()
        info["nfe_profile_sim"] = len(profile_steps)
        return MDLMPlan(
            placeholder=prompt_canvas(prompt, b, L, model.config.mask_id, dev),
            commit_step=commit_step,
            steps=range(T) if adaptive else steps.tolist(),
            step_sizes=[] if adaptive else (per_step.double() / b).tolist(),
            profile_steps=profile_steps,
            info=info,
        )

    def draw_commit_steps(self, seq_len: int, num_steps: int, generator: torch.Generator) -> Tensor:
        """One row's schedule for ``seq_len`` = n generated tokens: (n,) int64 steps, sorted."""
        counts = self.schedule.counts(seq_len, num_steps, generator, 1.0)
        if len(counts) != num_steps or sum(counts) != seq_len or min(counts) < 0:
            raise SamplerError(
                f"schedule '{self.config.schedule}' returned {len(counts)} counts summing to "
                f"{sum(counts)} for {seq_len} tokens over {num_steps} steps; counts() must "
                "return num_steps non-negative integers summing to n_tokens when alpha0 = 1. "
                "Fix the schedule's counts()."
            )
        steps = torch.arange(num_steps, device=generator.device)
        return torch.repeat_interleave(steps, torch.tensor(counts, device=generator.device))

    # ---- execute (timed) ---------------------------------------------------------------------

    @no_grad
    def execute(self, model: Any, plan: MDLMPlan, *, generator: torch.Generator) -> SampleResult:
        """Run the calling steps: forward, propose, select, commit (module docstring)."""
        if self.config.profile:
            return self.execute_profile(model, plan)
        x = plan.placeholder.clone()  # (b, L)
        mask_id = model.config.mask_id
        b, L = x.shape
        n_calls, sizes = 0, []
        for i in plan.steps:
            masked = x == mask_id  # (b, L)
            if self.policy.adaptive and not bool(masked.any()):
                break
            k = (plan.commit_step == i).sum(dim=-1)  # (b,)
            x, commit = self.step(model, x, masked, k, generator)
            n_calls += 1
            if self.policy.adaptive:
                sizes.append(float(commit.sum()) / b)
        return SampleResult(
            tokens=x,
            nfe_denoise=n_calls,
            nfe_total=n_calls,
            token_forwards=n_calls * L,
            step_sizes=sizes if self.policy.adaptive else list(plan.step_sizes),
            calls=[(L, L, L, L)] * n_calls,
            info=dict(plan.info),
        )

    def step(
        self, model: Any, x: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """One call: forward, then commit k tokens per row; returns (new x, commit mask).

        A policy that reads confidence needs a proposal at every position (b, L, V). Otherwise
        (random, left-to-right) the positions are chosen first and tokens are drawn only where
        they commit, (n_commit, V): the same distribution, without float64 SUBS and Gumbel
        noise over the whole (b, L, V) canvas.
        """
        if getattr(self.policy, "uses_confidence", True):
            log_p = self.denoise(model, x)  # (b, L, V) float64
            proposal = gumbel_argmax(log_p, generator)  # (b, L)
            keys = policy_keys(self.policy, log_p, proposal)  # (b, L) float64
            commit = self.policy.select(keys, masked, k, generator)  # (b, L) bool
            return torch.where(commit, proposal, x), commit
        commit = self.policy.select(None, masked, k, generator)  # (b, L) bool
        logits = model(x)[commit]  # (n_commit, V)
        cfg = self.config
        x = x.clone()
        x[commit] = sample_tokens(
            logits,
            model.config.mask_id,
            generator,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            convention=cfg.top_p_convention,
        )
        return x, commit

    def denoise(self, model: Any, x: Tensor) -> Tensor:
        """Full bidirectional forward, SUBS, temperature, top-p: (b, L) → (b, L, V) float64."""
        cfg = self.config
        log_p = subs_log_probs(model(x), model.config.mask_id, cfg.temperature)
        return top_p_filter(log_p, cfg.top_p, cfg.top_p_convention)

    def execute_profile(self, model: Any, plan: MDLMPlan) -> SampleResult:
        """The single-sequence simulated calls on placeholder tokens; no sampling arithmetic."""
        L = plan.placeholder.shape[1]
        for _ in plan.profile_steps:
            model(plan.placeholder)
        n = len(plan.profile_steps)
        return SampleResult(
            tokens=plan.placeholder,
            nfe_denoise=n,
            nfe_total=n,
            token_forwards=n * L,
            step_sizes=[],
            calls=[(L, L, L, L)] * n,
            info=dict(plan.info),
        )

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """round(E[NFE]) full-length calls (adaptive policies: the schedule's count, a bound).

        The expectation is over the L − P generated tokens; every call feeds all L rows.
        """
        L = seq_len
        n = expected_nfe(self.schedule, L - prompt_len, self.config.num_steps, batch_size)
        return [(L, L, L, L)] * int(round(n))
