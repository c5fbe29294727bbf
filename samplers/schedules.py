"""Unmasking schedules (how many tokens a step unmasks) and unmasking policies (which ones).

Two small registries, each entry one method wide (house-style §1):

* ``SCHEDULES``: the α_t maths. ``alpha(t)`` for t ∈ [0, 1] (non-increasing, α(0) ≈ 1,
  α(1) ≈ 0) and ``counts(n_tokens, num_steps, generator, alpha0)``: tokens unmasked at each of
  the T grid steps t_i = 1 − i/T → s_i = t_i − 1/T. Used by MDLM, BD3-LM (within a block) and
  Eso-LM's diffusion phase.
* ``POLICIES``: which masked positions a step commits, given how many. Adaptive policies
  (confidence, threshold) read the model's confidence, so their NFE depends on the model.

Adding a schedule takes ~20 lines: subclass nothing, define ``alpha`` (and ``counts`` if the
binomial walk is not what you want), decorate with ``@SCHEDULES.register("name")``. Third-party
packages register through the ``dlmbench.schedules`` entry-point group (see
:func:`load_entry_points`).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from harness.registry import Registry

EPS = 1e-3
"""Schedule epsilon of the reference code: α_t = 1 − (1 − ε)·t."""


@runtime_checkable
class Schedule(Protocol):
    """How many tokens each step unmasks."""

    name: ClassVar[str]

    def alpha(self, t: Tensor) -> Tensor:
        """α_t, the probability that a token is still clean at time t (float64 tensor)."""
        ...

    def counts(
        self, n_tokens: int, num_steps: int, generator: torch.Generator, alpha0: float = 1.0
    ) -> list[int]:
        """Tokens unmasked at each of the ``num_steps`` grid steps (zeros allowed).

        With ``alpha0 = 1`` the counts sum to ``n_tokens``; with ``alpha0 < 1`` about
        (1 − α0)·n_tokens remain for a sequential phase (Eso-LM).
        """
        ...


@runtime_checkable
class UnmaskPolicy(Protocol):
    """Which masked positions a step commits."""

    name: ClassVar[str]
    adaptive: ClassVar[bool]

    def select(
        self, confidence: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Choose positions to commit.

        Args:
            confidence: (b, n) float64 probability of each position's proposed token.
            masked: (b, n) bool, positions still masked.
            k: (b,) int64 tokens to commit per row (adaptive policies may ignore it).
            generator: random source on the same device.

        Returns:
            (b, n) bool, a subset of ``masked``.
        """
        ...


SCHEDULES: Registry[type] = Registry("schedule")
POLICIES: Registry[type] = Registry("unmasking policy")


def binomial_counts(
    schedule: Schedule,
    n_tokens: int,
    num_steps: int,
    generator: torch.Generator,
    alpha0: float = 1.0,
) -> list[int]:
    """The paper's binomial walk ("modified first-hitting", algorithms.md §3.4).

    Walk t = 1, 1 − 1/T, …, 1/T with s = t − 1/T. With R masks remaining draw
    n ~ Binomial(R, (α_s − α_t)/(1 − α_t)) where α = α0·schedule.alpha. Draws run on the CPU in
    float64 from ``generator``'s seed stream (a CPU generator is required).

    Returns:
        A list of ``num_steps`` counts (zeros kept: the sampler drops them).
    """
    grid = torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps  # t: 1 … 1/T
    a_t = alpha0 * schedule.alpha(grid)
    a_s = alpha0 * schedule.alpha(grid - 1.0 / num_steps)
    remaining = n_tokens
    out = []
    for i in range(num_steps):
        denom = float(1.0 - a_t[i])
        p = 0.0 if denom <= 0 else min(max(float(a_s[i] - a_t[i]) / denom, 0.0), 1.0)
        if remaining > 0 and p > 0:
            n = int(
                torch.binomial(
                    torch.tensor([float(remaining)], dtype=torch.float64),
                    torch.tensor([p], dtype=torch.float64),
                    generator=generator,
                ).item()
            )
        else:
            n = 0
        out.append(n)
        remaining -= n
    return out


@SCHEDULES.register("loglinear")
class LogLinear:
    """The papers' schedule: α_t = 1 − (1 − ε)·t (linear α, log-linear total noise σ(t))."""

    name = "loglinear"

    def alpha(self, t: Tensor) -> Tensor:
        """α_t = 1 − (1 − 10⁻³)·t."""
        return 1.0 - (1.0 - EPS) * torch.as_tensor(t, dtype=torch.float64)

    def counts(
        self, n_tokens: int, num_steps: int, generator: torch.Generator, alpha0: float = 1.0
    ) -> list[int]:
        """Binomial walk; with α0 = 1 the last step takes every remaining token."""
        return binomial_counts(self, n_tokens, num_steps, generator, alpha0)

    def counts_rows(
        self, n_tokens: int, num_steps: int, rows: int, generator: torch.Generator
    ) -> Tensor:
        """``rows`` independent walks at once (optional fast path, see binomial_counts_rows)."""
        return binomial_counts_rows(self, n_tokens, num_steps, rows, generator)


@POLICIES.register("random")
class RandomPolicy:
    """Commit k masked positions chosen uniformly at random (the ancestral samplers' rule)."""

    name = "random"
    adaptive = False

    def select(
        self, confidence: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Top-k of uniform random keys over the masked positions."""
        keys = torch.rand(masked.shape, generator=generator, device=masked.device)
        return _top_k_mask(keys, masked, k)


def _top_k_mask(keys: Tensor, masked: Tensor, k: Tensor) -> Tensor:
    """(b, n) bool selecting, per row, the k masked positions with the largest keys."""
    keys = keys.to(torch.float64).masked_fill(~masked, float("-inf"))
    order = torch.argsort(keys, dim=-1, descending=True)
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(keys.shape[-1], device=keys.device).expand_as(order)
    )
    return (rank < k[:, None]) & masked


def binomial_counts_rows(
    schedule: Schedule,
    n_tokens: int,
    num_steps: int,
    rows: int,
    generator: torch.Generator,
    alpha0: float = 1.0,
) -> Tensor:
    """``rows`` independent binomial walks drawn together: (rows, T) int64 on the CPU.

    Same law as ``rows`` calls of :func:`binomial_counts` (one vectorised draw per grid step
    instead of one per row and step). A schedule may expose it as the optional method
    ``counts_rows(n_tokens, num_steps, rows, generator)``; samplers that need many independent
    walks (BD3-LM: one per row and block) use it when present and call ``counts`` per row
    otherwise. ``generator`` must be a CPU generator.
    """
    grid = torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps  # t: 1 … 1/T
    a_t = alpha0 * schedule.alpha(grid)
    a_s = alpha0 * schedule.alpha(grid - 1.0 / num_steps)
    denom = 1.0 - a_t
    p = torch.where(denom > 0, (a_s - a_t) / denom.clamp_min(1e-300), 0.0).clamp(0.0, 1.0)
    remaining = torch.full((rows,), float(n_tokens), dtype=torch.float64)
    out = torch.zeros(rows, num_steps, dtype=torch.long)
    for i in range(num_steps):
        if p[i] <= 0:
            continue
        n = torch.binomial(remaining, p[i].expand(rows).contiguous(), generator=generator)
        out[:, i] = n.long()
        remaining -= n
    return out
