"""Agreement of an approximate cache with the exact path (Fast-dLLM prefix / dual cache).

A sampler config with ``cache`` in :data:`APPROXIMATE` (``mdlm_blocks``: Fast-dLLM's prefix and
dual K/V caches on a bidirectional model) reuses stale K/V, so its samples may differ from the
exact uncached loop. :func:`compare` runs the approximate config and the same config with
``cache: none`` from the same seed (the same plan draws, the same generator stream), recording
every call's block logits through the sampler's ``on_step`` observer, and reports

* ``tokens``: the fraction of generated positions (b × (L − P)) whose tokens are equal;
* ``step_drift``: per call (block j, call i, present on both paths), max |Δ raw logit| over the
  block rows still masked on the exact path before that call (the rows the call decides), the
  mask column excluded; ``logit_drift_max`` / ``logit_drift_mean`` summarise them. After the
  first differing commit the two canvases differ too, so later drift includes that divergence;
* ``quality_delta``: ``scorer(approx tokens) − scorer(exact tokens)`` for a given scorer.

The runner adds :meth:`Agreement.columns` (``agree_*``) to every full-mode cell whose sampler is
approximate, computed untimed after the timing.

A task cell answers its prompts in several batches from one generator: every batch is planned
in order, then every plan executed in order (``runner.time_task_cell``). :func:`compare_pass`
replays that pass for both configs (one generator each, seeded alike, so each path sees the
stream the scored pass saw) and pools the report over the batches: ``tokens`` over every
generated position of every prompt, ``step_drift`` over every compared call of every batch in
order, ``quality_delta`` from a scorer of the whole pass (the runner's task accuracy).
:func:`compare` is the one-batch pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dlmcore.errors import UserError
from samplers import SAMPLERS

APPROXIMATE = ("prefix", "dual")
"""``cache`` values that are approximate (need an agreement report)."""


class AgreementError(UserError):
    """An agreement report was asked of a config that has no approximate cache."""


@dataclass(frozen=True)
class Agreement:
    """Approximate-vs-exact agreement of one (config, seed, shape).

    Attributes:
        tokens: fraction of generated positions with equal tokens, in [0, 1].
        step_drift: per compared call, max |Δ logit| at the rows it decides.
        quality_delta: scorer(approximate) − scorer(exact); NaN without a scorer.
        calls_approx: network calls of the approximate path.
        calls_exact: network calls of the exact path.
    """

    tokens: float
    step_drift: tuple[float, ...]
    quality_delta: float = math.nan
    calls_approx: int = 0
    calls_exact: int = 0

    @property
    def logit_drift_max(self) -> float:
        """Largest per-call drift (0 with no compared call)."""
        return max(self.step_drift, default=0.0)

    @property
    def logit_drift_mean(self) -> float:
        """Mean per-call drift (0 with no compared call)."""
        return sum(self.step_drift) / len(self.step_drift) if self.step_drift else 0.0

    def columns(self) -> dict[str, float]:
        """The runner's ``agree_*`` columns."""
        return {
            "agree_tokens": self.tokens,
            "agree_logit_drift_max": self.logit_drift_max,
            "agree_logit_drift_mean": self.logit_drift_mean,
        }


def is_approximate(config: Any) -> bool:
    """Whether a sampler config selects an approximate cache."""
    return getattr(config, "cache", None) in APPROXIMATE


def exact_config(config: Any) -> Any:
    """The same config with ``cache: none``.

    Raises:
        AgreementError: ``config`` has no approximate cache.
    """
    if not is_approximate(config):
        raise AgreementError(
            f"agreement needs a sampler config with cache in {', '.join(APPROXIMATE)}; got "
            f"cache={getattr(config, 'cache', None)!r}. Set cache: prefix or cache: dual."
        )
    return dataclasses.replace(config, cache="none")


@dataclass(frozen=True, eq=False)
class Batch:
    """One sampler call of a pass.

    Attributes:
        batch_size: b.
        seq_len: L, the whole canvas (prompt included).
        prompt: optional (b, P) int64 prompt ids, the canvas's fixed prefix.
    """

    batch_size: int
    seq_len: int
    prompt: torch.Tensor | None = None

    @property
    def prompt_len(self) -> int:
        """P (0 without a prompt)."""
        return 0 if self.prompt is None else int(self.prompt.shape[1])


Steps = dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]
"""{(block j, call i): (masked (b, n_j) bool before the call, raw logits (b, n_j, V) float32)}."""


def plan_pass(sampler: Any, model: Any, batches: list[Batch], generator: Any) -> list[Any]:
    """Plan every batch in order from ``generator`` (as the runner plans a task pass)."""
    return [
        sampler.plan(
            model,
            batch_size=b.batch_size,
            seq_len=b.seq_len,
            generator=generator,
            prompt=b.prompt,
        )
        for b in batches
    ]


def execute_recorded(
    sampler: Any, model: Any, plan: Any, generator: Any
) -> tuple[torch.Tensor, Steps, int]:
    """``execute(plan)`` with every call observed: tokens (b, L), :data:`Steps`, NFE."""
    steps: Steps = {}

    def on_step(j: int, i: int, masked: torch.Tensor, logits: torch.Tensor) -> None:
        steps[(j, i)] = (masked.clone(), logits.detach().float().clone())

    sampler.on_step = on_step
    try:
        result = sampler.execute(model, plan, generator=generator)
    finally:
        sampler.on_step = None
    return result.tokens, steps, result.nfe_total


def run_recorded(
    name: str,
    config: Any,
    model: Any,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    prompt: torch.Tensor | None,
    device: Any,
) -> tuple[torch.Tensor, Steps, int]:
    """``sample(seed)`` with every call observed: tokens (b, L), :data:`Steps`, NFE."""
    sampler = SAMPLERS.build(name, config)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    (plan,) = plan_pass(sampler, model, [Batch(batch_size, seq_len, prompt)], gen)
    return execute_recorded(sampler, model, plan, gen)


def step_drift(
    approx: tuple[torch.Tensor, torch.Tensor],
    exact: tuple[torch.Tensor, torch.Tensor],
    mask_id: int,
) -> float:
    """max |Δ logit| over the rows masked on the exact path, mask column excluded (0 if none)."""
    masked = exact[0]  # (b, n)
    keep = torch.ones(exact[1].shape[-1], dtype=torch.bool, device=masked.device)
    if 0 <= mask_id < keep.numel():
        keep[mask_id] = False
    diff = (approx[1] - exact[1])[masked][:, keep]  # (rows, V − 1)
    return float(diff.abs().max()) if diff.numel() else 0.0


def compare(
    name: str,
    config: Any,
    model: Any,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    prompt: torch.Tensor | None = None,
    device: Any = "cpu",
    scorer: Callable[[torch.Tensor], float] | None = None,
) -> Agreement:
    """Run ``config`` (approximate) and its ``cache: none`` twin from ``seed``; compare them.

    Args:
        name: sampler registry name (``mdlm_blocks``).
        config: its config, with ``cache`` in :data:`APPROXIMATE`.
        model: the denoiser.
        batch_size: b.
        seq_len: L.
        seed: the generator seed both paths start from.
        prompt: optional (b, P) prompt, the same for both.
        device: the generator's device.
        scorer: optional ``tokens (b, L) → float`` quality score (higher or lower is better:
            the delta is reported as approximate − exact).

    Raises:
        AgreementError: ``config`` has no approximate cache.
    """
    pass_scorer = None if scorer is None else (lambda tokens: scorer(tokens[0]))
    rep, _ = compare_pass(
        name,
        config,
        model,
        batches=[Batch(batch_size, seq_len, prompt)],
        seed=seed,
        device=device,
        scorer=pass_scorer,
    )
    return rep


def compare_pass(
    name: str,
    config: Any,
    model: Any,
    *,
    batches: list[Batch],
    seed: int,
    device: Any = "cpu",
    scorer: Callable[[list[torch.Tensor]], float] | None = None,
) -> tuple[Agreement, list[torch.Tensor]]:
    """Replay a pass over ``batches`` with ``config`` and its ``cache: none`` twin; compare.

    Each path has its own generator seeded with ``seed``; it plans every batch in order, then
    executes the plans in order (batch k of both paths is run before batch k + 1, so only one
    batch's recorded logits are held at a time).

    Args:
        name: sampler registry name (``mdlm_blocks``).
        config: its config, with ``cache`` in :data:`APPROXIMATE`.
        model: the denoiser.
        batches: the sampler calls of the pass, in the order the scored pass ran them.
        seed: the generator seed both paths start from.
        device: the generators' device.
        scorer: optional ``[tokens (b_k, L_k) per batch] → float`` quality score of a whole
            pass; the delta is approximate − exact.

    Returns:
        The pooled :class:`Agreement`, and the approximate path's tokens per batch.

    Raises:
        AgreementError: ``config`` has no approximate cache.
    """
    samplers = [SAMPLERS.build(name, c) for c in (config, exact_config(config))]
    gens = [torch.Generator(device=device) for _ in samplers]
    plans = []
    for sampler, gen in zip(samplers, gens, strict=True):
        gen.manual_seed(seed)
        plans.append(plan_pass(sampler, model, batches, gen))
    tokens: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    same = positions = 0
    drift: list[float] = []
    calls = [0, 0]
    for k, batch in enumerate(batches):
        runs = [
            execute_recorded(sampler, model, plan[k], gen)
            for sampler, plan, gen in zip(samplers, plans, gens, strict=True)
        ]
        equal, drift_k = compare_batch(runs[0], runs[1], batch.prompt_len, model.config.mask_id)
        same += equal
        positions += runs[0][0][:, batch.prompt_len :].numel()
        drift += drift_k
        for path, (tok, _, nfe) in enumerate(runs):
            calls[path] += nfe
            tokens[path].append(tok)
        del runs  # this batch's recorded logits
    delta = math.nan if scorer is None else float(scorer(tokens[0])) - float(scorer(tokens[1]))
    rep = Agreement(
        tokens=same / positions if positions else 1.0,
        step_drift=tuple(drift),
        quality_delta=delta,
        calls_approx=calls[0],
        calls_exact=calls[1],
    )
    return rep, tokens[0]


def compare_batch(
    approx: tuple[torch.Tensor, Steps, int],
    exact: tuple[torch.Tensor, Steps, int],
    prompt_len: int,
    mask_id: int,
) -> tuple[int, list[float]]:
    """Equal generated tokens (positions ≥ P) and per-call drift of one batch's two runs."""
    (tok_a, steps_a, _), (tok_e, steps_e, _) = approx, exact
    equal = int((tok_a[:, prompt_len:] == tok_e[:, prompt_len:]).sum())
    both = [c for c in sorted(steps_e) if c in steps_a]
    return equal, [step_drift(steps_a[c], steps_e[c], mask_id) for c in both]
