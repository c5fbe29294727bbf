"""The timing core: warm-up, synchronised timed repeats, and their statistics.

Timed region (measurement.md §1): the device is synchronised before the host timer starts and
after the callable returns; on CUDA a pair of events brackets the same region, giving device time
next to wall time. Anything that must not be timed (re-seeding the generator) happens in
``reset`` between regions.

Statistics (measurement.md §3): the median is the headline, mean ± sample std for comparison with
the papers, and a percentile-bootstrap 95 % confidence interval of the median.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

WARMUP_TOLERANCE = 0.05
"""The last warm-up must lie within this fraction of the timed median (measurement.md §2.4)."""


class Meter(Protocol):
    """Something opened and closed around the timed repeats (the energy meter)."""

    def start(self) -> None:
        """Open the window."""
        ...

    def stop(self) -> dict:
        """Close it and return its readings."""
        ...


class MeterGroup:
    """Several meters opened and closed together; ``stop`` merges their readings."""

    def __init__(self, *meters: Meter) -> None:
        self.meters = meters

    def start(self) -> None:
        """Open every meter, in order."""
        for m in self.meters:
            m.start()

    def stop(self) -> dict:
        """Close them in reverse order and merge their readings (keys must not clash)."""
        out: dict = {}
        for m in reversed(self.meters):
            out.update(m.stop())
        return out


def synchronize(device: str) -> None:
    """Wait for all queued work on ``device`` (no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device == "mps":
        torch.mps.synchronize()


def time_once(fn: Callable[[], Any], device: str) -> tuple[float, float, Any]:
    """Run ``fn`` once in a synchronised region.

    Returns:
        ``(wall seconds, device milliseconds or NaN off CUDA, fn's return value)``.
    """
    if device.startswith("cuda"):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        return t1 - t0, start.elapsed_time(end), out
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, math.nan, out


@dataclass
class Measurement:
    """Raw timings of one cell.

    Attributes:
        wall_s: per timed repeat, seconds.
        device_ms: per timed repeat, CUDA-event milliseconds (NaN off CUDA).
        warmup_s: per warm-up execution, seconds.
        first: the first timed repeat's return value.
        meter: the meter's readings over all timed repeats (empty without a meter).
    """

    wall_s: list[float] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)
    warmup_s: list[float] = field(default_factory=list)
    first: Any = None
    meter: dict = field(default_factory=dict)


def measure(
    fn: Callable[[], Any],
    *,
    device: str,
    repeats: int,
    warmup: int = 0,
    reset: Callable[[], None] | None = None,
    min_time_s: float | None = None,
    max_repeats: int | None = None,
    meter: Meter | None = None,
    on_first_warmup: Callable[[], Any] | None = None,
) -> Measurement:
    """Warm up, then time ``fn`` until ``repeats`` (and ``min_time_s``, if set) are reached.

    Args:
        fn: the timed callable (e.g. ``sampler.execute(model, plan, generator=g)``).
        device: where ``fn`` runs (decides how to synchronise).
        repeats: minimum timed repeats.
        warmup: untimed-for-statistics executions before the timed ones (their times are kept
            for the sufficiency check).
        reset: called before every execution, outside the timed region (re-seeding).
        min_time_s: keep repeating until the timed total reaches this.
        max_repeats: cap when ``min_time_s`` is set (default ``max(repeats, 1000)``).
        meter: started after the warm-up (device synchronised) and stopped after the last
            repeat (synchronised), so it spans exactly the timed repeats.
        on_first_warmup: context-manager factory wrapped around the first warm-up (a NaN check).

    Returns:
        The raw :class:`Measurement`.
    """
    m = Measurement()
    for i in range(warmup):
        if reset:
            reset()
        if i == 0 and on_first_warmup is not None:
            with on_first_warmup():
                m.warmup_s.append(time_once(fn, device)[0])
        else:
            m.warmup_s.append(time_once(fn, device)[0])
    cap = max_repeats if max_repeats is not None else max(repeats, 1000)
    synchronize(device)
    if meter is not None:
        meter.start()
    while True:
        if reset:
            reset()
        wall, dev, out = time_once(fn, device)
        m.wall_s.append(wall)
        m.device_ms.append(dev)
        if m.first is None:
            m.first = out
        del out
        n = len(m.wall_s)
        if n >= cap or (n >= repeats and (min_time_s is None or sum(m.wall_s) >= min_time_s)):
            break
    if meter is not None:
        m.meter = meter.stop()
    return m


def bootstrap_median_ci(
    x: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median.

    Resamples ``x`` with replacement ``n_boot`` times (seeded, so the interval is reproducible)
    and takes the ``(1 ± level)/2`` quantiles of the resampled medians.

    Returns:
        ``(lo, hi)``; ``(x0, x0)`` for one value; NaNs for none.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    if a.size == 1:
        return float(a[0]), float(a[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    meds = np.median(a[idx], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def summarise(wall_s: Sequence[float], warmup_s: Sequence[float] = ()) -> dict[str, Any]:
    """Statistics of the timed repeats, as result columns.

    Returns:
        ``wall_s`` (median), ``wall_s_mean``, ``wall_s_std`` (sample std, NaN for one repeat),
        ``wall_s_ci_lo``/``wall_s_ci_hi`` (bootstrap 95 % CI of the median), ``wall_s_cv``
        (std/mean), ``wall_s_iqr``, ``wall_s_p90``, ``repeats``, ``warmup``, ``warmup_last_s``
        and ``warmup_ok`` (last warm-up within 5 % of the median; False without warm-up).
    """
    a = np.asarray(wall_s, dtype=np.float64)
    med = float(np.median(a))
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else math.nan
    lo, hi = bootstrap_median_ci(a)
    q25, q75, p90 = np.quantile(a, [0.25, 0.75, 0.9])
    last = float(warmup_s[-1]) if len(warmup_s) else math.nan
    return {
        "wall_s": med,
        "wall_s_mean": mean,
        "wall_s_std": std,
        "wall_s_ci_lo": lo,
        "wall_s_ci_hi": hi,
        "wall_s_cv": std / mean if mean > 0 else math.nan,
        "wall_s_iqr": float(q75 - q25),
        "wall_s_p90": float(p90),
        "repeats": int(a.size),
        "warmup": len(warmup_s),
        "warmup_last_s": last,
        "warmup_ok": bool(abs(last - med) <= WARMUP_TOLERANCE * med) if len(warmup_s) else False,
    }
