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
) -> tuple[torch.Tensor, dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]], int]:
    """``sample(seed)`` with every call observed: tokens (b, L), {(j, i): (masked, logits)}, NFE.

    masked: (b, n_j) bool before call i of block j; logits: (b, n_j, V) float32 copies.
    """
    sampler = SAMPLERS.build(name, config)
    steps: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def on_step(j: int, i: int, masked: torch.Tensor, logits: torch.Tensor) -> None:
        steps[(j, i)] = (masked.clone(), logits.detach().float().clone())

    sampler.on_step = on_step
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    result = sampler.sample(
        model, batch_size=batch_size, seq_len=seq_len, generator=gen, prompt=prompt
    )
    return result.tokens, steps, result.nfe_total


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
    exact_cfg = exact_config(config)
    kw = dict(batch_size=batch_size, seq_len=seq_len, seed=seed, prompt=prompt, device=device)
    tok_a, steps_a, nfe_a = run_recorded(name, config, model, **kw)
    tok_e, steps_e, nfe_e = run_recorded(name, exact_cfg, model, **kw)
    P = 0 if prompt is None else prompt.shape[1]
    same = (tok_a[:, P:] == tok_e[:, P:]).double()
    mask_id = model.config.mask_id
    both = [k for k in sorted(steps_e) if k in steps_a]
    drift = tuple(step_drift(steps_a[k], steps_e[k], mask_id) for k in both)
    delta = math.nan if scorer is None else float(scorer(tok_a)) - float(scorer(tok_e))
    return Agreement(
        tokens=float(same.mean()) if same.numel() else 1.0,
        step_drift=drift,
        quality_delta=delta,
        calls_approx=nfe_a,
        calls_exact=nfe_e,
    )
