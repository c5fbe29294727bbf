"""Eso-LM (B): causal attention over a permuted order π, with an exact one-step-lag KV cache.

``algorithms.md`` §3.4 (reference: s-sahoo/Eso-LMs ``algo.py:EsoLM.generate_samples``).

Plan (untimed): draw the step sizes K from the schedule's binomial walk with α_t scaled by
α0_eval (zeros dropped, then L − n_MDM sequential steps of one token), draw one π per sample with
its sequential tail re-sorted ascending, gather the rotary tables by π once, allocate the cache.

Execute (timed): for each step of size k, feed the k_prev tokens committed last step followed by
the k masks decoded now; their K/V land at cache rows [n_c, n_c + k_prev + k) and the head runs
on the last k rows; sample; n_c += k_prev. The uncached oracle (``kv_cache: false``) recomputes
the whole π-sorted prefix with a plain causal forward each step. Finally un-permute.

Prompted: the P prompt positions are clean from the start. They come first in π (in natural
order, so they attend to each other causally, like any π-prefix) and count as the tokens
"committed at step 0": the first call feeds them together with the first k masks, writing their
K/V at cache rows [0, P) exactly as the one-step lag writes last step's tokens, so a prompt adds
no call (first call (P + k, P + k, P + k, k)). K, the schedule and E[NFE] cover the L − P
generated positions only. The oracle feeds the π-sorted prefix including the prompt each step.

The loop (:func:`decode`) and the plan pieces are shared with the interleaved ("subcontext")
sampler in :mod:`samplers.esolm_interleaved`, which builds another π and K and runs the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from samplers.base import (
    SAMPLERS,
    CallRecord,
    PlanExecute,
    SampleResult,
    check_common,
    check_config,
    check_family,
    check_prompt,
    numerics_problems,
    prompt_info,
    sample_tokens,
)
from samplers.lazytorch import lazy_torch, no_grad
from samplers.schedules import SCHEDULES

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EsoLMConfig:
    """Eso-LM (B) sampler settings.

    Attributes:
        num_steps: T, grid steps of the diffusion phase (the paper's 16 … 4096).
        alpha0_eval: α0, expected fraction of tokens decoded by diffusion; the remaining
            ≈ (1 − α0)·L tokens are decoded one per step, left to right (sequential phase).
        schedule: name in ``SCHEDULES`` giving α_t (scaled by α0).
        kv_cache: ``true`` = the one-step-lag K/V cache; ``false`` = the uncached oracle that
            re-encodes the whole π-sorted prefix every step (same tokens for the same seed).
        temperature: divides the logits before sampling.
        top_p: nucleus mass in (0, 1]; 1 disables nucleus filtering.
        top_p_convention: ``hf`` (keep the token crossing p, Eso-LMs) or ``strict``.
        profile: network-only timing: the same calls and shapes on placeholder tokens.
    """

    num_steps: int = 128
    alpha0_eval: float = 1.0
    schedule: str = "loglinear"
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
            out.append(
                f"'alpha0_eval' is {self.alpha0_eval}; it must lie in [0, 1] "
                "(1 = all diffusion, 0 = all sequential)."
            )
        if self.schedule not in SCHEDULES:
            out.append(f"'schedule': {SCHEDULES.unknown_message(self.schedule)}")
        return out


# --------------------------------------------------------------------------------------------
# Plan: step sizes K, order π, rotary tables, cache
# --------------------------------------------------------------------------------------------


@dataclass
class EsoPlan:
    """Everything decided before the timed loop.

    Attributes:
        order: π, (b, L) int64 on the model's device; ``order[r, j]`` is the natural position
            decoded j-th in row r. With a prompt, ``order[:, :P]`` = 0 … P−1.
        steps: K, tokens committed per step (shared by the batch); sums to L − P.
        n_mdm: generated tokens decoded by diffusion steps; the last L − P − n_mdm steps have
            size 1.
        rope: rotary (cos, sin) gathered by π, (b, L, 1, d_h) each; ``None`` when uncached.
        cache: the K/V cache of L rows; ``None`` when uncached.
        nfe_expected: analytic E[len(K)] for this configuration.
        info: extra scalars copied into ``SampleResult.info``.
    """

    order: Tensor
    steps: list[int]
    n_mdm: int
    rope: tuple[Tensor, Tensor] | None
    cache: Any | None
    nfe_expected: float
    info: dict[str, Any] = field(default_factory=dict)
    prompt: Tensor | None = None

    @property
    def prompt_len(self) -> int:
        """P, the clean prefix in π (0 without a prompt)."""
        return 0 if self.prompt is None else self.prompt.shape[1]

    @property
    def batch_size(self) -> int:
        """b."""
        return self.order.shape[0]

    @property
    def seq_len(self) -> int:
        """L."""
        return self.order.shape[1]


def host_generator(generator: torch.Generator) -> torch.Generator:
    """A CPU generator for the schedule's binomial draws (``binomial_counts`` needs one).

    A CPU ``generator`` is used as is; a device generator seeds a fresh CPU one from one draw of
    its own stream, so the plan stays a pure function of the seed.
    """
    if generator.device.type == "cpu":
        return generator
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return torch.Generator().manual_seed(int(seed.item()))


def step_sizes(
    schedule: Any, seq_len: int, num_steps: int, generator: torch.Generator, alpha0: float
) -> tuple[list[int], int]:
    """K = non-zero diffusion counts, then (L − n_MDM) ones (algorithms.md §3.4, steps 2–3).

    With α0 = 1 any tokens the walk leaves behind are decoded in one extra step.

    Returns:
        (K, n_MDM); sum(K) = L.
    """
    counts = schedule.counts(seq_len, num_steps, host_generator(generator), alpha0)
    steps = [int(c) for c in counts if c > 0]
    n_mdm = sum(steps)
    rest = seq_len - n_mdm
    if rest < 0:
        raise ValueError(f"schedule '{schedule.name}' unmasked {n_mdm} > L = {seq_len} tokens")
    if rest and alpha0 >= 1.0:
        return steps + [rest], seq_len
    return steps + [1] * rest, n_mdm


def random_order(
    batch_size: int, seq_len: int, n_mdm: int, generator: torch.Generator, prompt_len: int = 0
) -> Tensor:
    """π: the prompt 0 … P−1, then a uniform permutation of P … L−1 per sample.

    The permutation's last L − P − n_MDM entries are sorted ascending (the sequential tail).

    Returns:
        (b, L) int64 on ``generator``'s device.
    """
    P, dev = prompt_len, generator.device
    shape = (batch_size, seq_len - P)
    keys = torch.rand(shape, generator=generator, device=dev, dtype=torch.float64)
    order = keys.argsort(dim=-1) + P  # (b, L − P)
    order[:, n_mdm:] = order[:, n_mdm:].sort(dim=-1).values
    if P == 0:
        return order
    head = torch.arange(P, device=dev).expand(batch_size, P)
    return torch.cat([head, order], dim=1)


def reveal_probabilities(schedule: Any, num_steps: int, alpha0: float) -> Tensor:
    """q_i: probability that a token masked at t = 1 is unmasked at grid step i, (T,) float64.

    The binomial walk with p_i = (α_s − α_t)/(1 − α_t) telescopes to
    q_i = (α_{s_i} − α_{t_i}) / (1 − α_{t=1}); 1 − Σq is the chance of reaching the sequential
    phase (≈ 1 − α0).
    """
    t = torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps
    a_t = alpha0 * schedule.alpha(t)
    a_s = alpha0 * schedule.alpha(t - 1.0 / num_steps)
    denom = float(1.0 - alpha0 * schedule.alpha(torch.ones((), dtype=torch.float64)))
    if denom <= 0:
        return torch.zeros(num_steps, dtype=torch.float64)
    return ((a_s - a_t) / denom).clamp(0.0, 1.0)


def expected_nfe(schedule: Any, seq_len: int, num_steps: int, alpha0: float) -> float:
    """E[len(K)] = Σ_i [1 − (1 − q_i)^L] + E[sequential steps] (algorithms.md §3.4).

    The counts are multinomial(L; q_1 … q_T, 1 − Σq), so step i is non-empty with probability
    1 − (1 − q_i)^L. The sequential phase adds L(1 − Σq) single steps, or, with α0 = 1, one
    extra step with probability 1 − (Σq)^L. For loglinear, α0 = 1: T(1 − (1 − 1/T)^L).
    """
    q = reveal_probabilities(schedule, num_steps, alpha0)
    diffusion = float((1.0 - (1.0 - q) ** seq_len).sum())
    reach = float(q.sum().clamp(max=1.0))
    if alpha0 >= 1.0:
        return diffusion + (1.0 - reach**seq_len)
    return diffusion + seq_len * (1.0 - reach)


def prepare(
    model: Any,
    order: Tensor,
    steps: list[int],
    n_mdm: int,
    *,
    kv_cache: bool,
    nfe_expected: float,
    info: dict[str, Any] | None = None,
    prompt: Tensor | None = None,
) -> EsoPlan:
    """Gather the rotary tables by π once and allocate the L-row cache (cached path only)."""
    b, L = order.shape
    rope = cache = None
    if kv_cache:
        rope = model.rotary_emb.tables(order)  # (b, L, 1, d_h) each
        cache = model.new_kv_cache(b, L)
    return EsoPlan(order, steps, n_mdm, rope, cache, nfe_expected, dict(info or {}), prompt)


# --------------------------------------------------------------------------------------------
# Execute: the step loop
# --------------------------------------------------------------------------------------------


def commit(
    x_pi: Tensor, u: int, logits: Tensor, cfg: Any, mask_id: int, generator: torch.Generator
) -> None:
    """Sample the k tokens decoded now (float64 Gumbel over (b, k, V)) into x_π[:, u : u+k]."""
    k = logits.shape[1]
    x_pi[:, u : u + k] = sample_tokens(
        logits,
        mask_id,
        generator,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        convention=cfg.top_p_convention,
    )


def decode_cached(
    model: Any, x_pi: Tensor, plan: EsoPlan, cfg: Any, generator: torch.Generator
) -> list[CallRecord]:
    """The one-step-lag cached loop of algorithms.md §3.4; fills x_π (b, L) in place.

    Each call feeds x_π[u − k_prev : u + k]: the k_prev tokens committed last step (their K/V
    written now over last step's provisional mask rows) and the k masks decoded now. The prompt
    is step 0's commitment: the first call feeds its P tokens before the first k masks.
    """
    cos, sin = plan.rope
    mask_id = model.config.mask_id
    calls: list[CallRecord] = []
    P = plan.prompt_len
    u, k_prev, n_c = P, P, 0
    for k in plan.steps:
        rows = slice(u - k_prev, u + k)
        logits = model.forward_cached(
            x_pi[:, rows],
            plan.cache,
            start=n_c,
            causal=True,
            rope=(cos[:, rows], sin[:, rows]),
            logits=k,
        )  # (b, k, V)
        calls.append((k_prev + k, k_prev + k, n_c + k_prev + k, k))
        if not cfg.profile:
            commit(x_pi, u, logits, cfg, mask_id, generator)
        n_c += k_prev
        u, k_prev = u + k, k
    return calls


def decode_uncached(
    model: Any, x_pi: Tensor, plan: EsoPlan, cfg: Any, generator: torch.Generator
) -> list[CallRecord]:
    """The oracle: each step a plain causal forward over the π-sorted x_π[:, :u+k].

    Rotary positions are π itself, so every token keeps the angle of its natural position.
    """
    mask_id = model.config.mask_id
    calls: list[CallRecord] = []
    u = plan.prompt_len
    for k in plan.steps:
        logits = model.forward(
            x_pi[:, : u + k], positions=plan.order[:, : u + k], is_causal=True, logits=k
        )  # (b, k, V)
        calls.append((u + k, u + k, u + k, k))
        if not cfg.profile:
            commit(x_pi, u, logits, cfg, mask_id, generator)
        u += k
    return calls


def unpermute(x_pi: Tensor, order: Tensor) -> Tensor:
    """x[r, π[r, j]] = x_π[r, j]: (b, L) in π order → (b, L) in natural order."""
    return torch.empty_like(x_pi).scatter_(1, order, x_pi)


def decode(model: Any, plan: EsoPlan, cfg: Any, generator: torch.Generator) -> SampleResult:
    """Run a plan (cached or uncached per ``plan.cache``) and package the result.

    Shared by ``esolm`` and ``esolm_block``; ``cfg`` needs ``temperature``, ``top_p``,
    ``top_p_convention`` and ``profile``.
    """
    b, L, P = plan.batch_size, plan.seq_len, plan.prompt_len
    x_pi = torch.full((b, L), model.config.mask_id, dtype=torch.long, device=plan.order.device)
    if plan.prompt is not None:
        x_pi[:, :P] = plan.prompt  # π starts with 0 … P−1
    if plan.cache is not None:
        plan.cache.reset()
        calls = decode_cached(model, x_pi, plan, cfg, generator)
    else:
        calls = decode_uncached(model, x_pi, plan, cfg, generator)
    nfe = len(plan.steps)
    info = {
        **plan.info,
        "n_mdm": plan.n_mdm,
        "k_last": plan.steps[-1],
        "nfe_expected": plan.nfe_expected,
        "kv_cache": plan.cache is not None,
        "profile": bool(cfg.profile),
        "outside_timer": "step sizes, order, rotary tables gathered by order, cache allocation",
        **prompt_info(P, L),
    }
    return SampleResult(
        tokens=unpermute(x_pi, plan.order),
        nfe_denoise=nfe,
        nfe_total=nfe,
        token_forwards=sum(c[0] for c in calls),
        step_sizes=list(plan.steps),
        calls=calls,
        info=info,
    )


def step_calls(
    steps: list[int], seq_len: int, kv_cache: bool, prompt_len: int = 0
) -> list[CallRecord]:
    """The call records that ``decode`` produces for step sizes ``steps`` (no network)."""
    calls: list[CallRecord] = []
    u = k_prev = prompt_len
    n_c = 0
    for k in steps:
        if kv_cache:
            calls.append((k_prev + k, k_prev + k, n_c + k_prev + k, k))
        else:
            calls.append((u + k, u + k, u + k, k))
        n_c += k_prev
        u, k_prev = u + k, k
    assert u == seq_len, f"step sizes sum to {u}, expected L = {seq_len}"
    return calls


def even_split(total: int, parts: int) -> list[int]:
    """``total`` tokens over ``parts`` steps as evenly as possible (sizes differ by ≤ 1)."""
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------


@SAMPLERS.register("esolm")
class EsoLMSampler(PlanExecute):
    """Eso-LM (B) with a binomial-walk diffusion phase and a left-to-right sequential phase."""

    name: ClassVar[str] = "esolm"
    families: ClassVar[tuple[str, ...]] = ("esolm",)
    config_class: ClassVar[type] = EsoLMConfig

    def __init__(self, config: EsoLMConfig | None = None) -> None:
        """Build from ``config`` (defaults when ``None``).

        Raises:
            ConfigError: listing every problem of the config.
        """
        self.config = check_config(self.name, config or EsoLMConfig())
        self.schedule = SCHEDULES.build(self.config.schedule)

    @no_grad
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
    ) -> EsoPlan:
        """Draw K and π, gather rotary by π, allocate the cache (untimed).

        ``prompt``: (b, P) int64 clean prefix, first in π, or ``None`` (``samplers/base.py``).

        Raises:
            SamplerError: wrong model family, batch_size / seq_len < 1, or a bad prompt.
        """
        check_family(self, model)
        check_common(batch_size, seq_len)
        prompt = check_prompt(prompt, batch_size, seq_len, model.config, generator.device)
        P = 0 if prompt is None else prompt.shape[1]
        cfg, n = self.config, seq_len - P
        steps, n_mdm = step_sizes(self.schedule, n, cfg.num_steps, generator, cfg.alpha0_eval)
        order = random_order(batch_size, seq_len, n_mdm, generator, P)
        expected = expected_nfe(self.schedule, n, cfg.num_steps, cfg.alpha0_eval)
        return prepare(
            model,
            order,
            steps,
            n_mdm,
            kv_cache=cfg.kv_cache,
            nfe_expected=expected,
            info={"alpha0_eval": cfg.alpha0_eval, "schedule": cfg.schedule},
            prompt=prompt,
        )

    @no_grad
    def execute(self, model: Any, plan: EsoPlan, *, generator: torch.Generator) -> SampleResult:
        """The timed loop; replayable (the cache is reset first)."""
        return decode(model, plan, self.config, generator)

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """Calls for the expected K: E[#diffusion steps] steps sharing E[n_MDM], then ones.

        Over the n = L − P generated positions; the first call also feeds the P prompt rows.
        """
        cfg, n = self.config, seq_len - prompt_len
        q = reveal_probabilities(self.schedule, cfg.num_steps, cfg.alpha0_eval)
        n_steps = round(float((1.0 - (1.0 - q) ** n).sum()))
        n_mdm = n if cfg.alpha0_eval >= 1.0 else round(n * float(q.sum()))
        n_mdm = min(max(n_mdm, n_steps), n)
        steps = even_split(n_mdm, max(n_steps, 1 if n_mdm else 0))
        steps += [1] * (n - sum(steps))
        return step_calls(steps, seq_len, cfg.kv_cache, prompt_len)
