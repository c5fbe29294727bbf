"""Benchmarks of the timing core (opt-in: ``make bench`` or ``pytest -m benchmark tests/bench``).

1. Agreement: the timing core's median vs ``torch.utils.benchmark`` on the same callable (a
   cpu-s DiT forward), A/B interleaved over rounds; goal within 5 %.
2. Overhead: the timed loop (``timing.measure`` with a generator reset per repeat) vs a bare
   ``for`` loop over the same callable; goal at most 2 %.

Both print their numbers and store them in ``benchmark.extra_info``.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.utils.benchmark as tb

from harness.model.network import DiT, DiTConfig, deterministic_init
from harness.run import timing

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def forward():
    torch.manual_seed(0)
    cfg = DiTConfig.from_size("cpu-s", family="mdlm", vocab_size=1025)
    model = deterministic_init(DiT(cfg)).eval().freeze_conditioning()
    x = torch.randint(0, 1024, (1, 128))

    def fn():
        with torch.inference_mode():
            return model(x)

    return fn


def test_timing_core_agrees_with_torch_utils_benchmark(forward, benchmark):
    """Per-call times from both timers, alternating call by call (200 each) so that both see the
    same machine load; compares the two per-call medians."""
    # Timer runs its statement with num_threads=1 unless told otherwise: use the caller's count.
    timer = tb.Timer("fn()", globals={"fn": forward}, num_threads=torch.get_num_threads())
    timing.measure(forward, device="cpu", repeats=10, warmup=5)
    ours, theirs = [], []
    for _ in range(200):
        ours += timing.measure(forward, device="cpu", repeats=1).wall_s
        theirs.append(timer.timeit(1).median)
    ratio = statistics.median(ours) / statistics.median(theirs)
    ours_ms, theirs_ms = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
    benchmark.extra_info.update(ours_ms=ours_ms, torch_ms=theirs_ms, ratio=ratio)
    print(
        f"\nmedian per call: timing core {ours_ms:.3f} ms, "
        f"torch.utils.benchmark {theirs_ms:.3f} ms, ratio {ratio:.4f}"
    )
    benchmark.pedantic(forward, rounds=20, warmup_rounds=3)
    assert abs(ratio - 1) <= 0.05


def test_harness_overhead_of_the_timed_loop(forward, benchmark):
    """Overhead = time outside the timed regions (reset, bookkeeping) + the timer's own cost.

    Both are measured inside the same run, so machine noise (other processes) cancels; the
    bare-loop vs timed-loop difference is printed too, but it is noise-dominated on a shared CPU.
    """
    n = 60
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    outside, bare_vs_timed = [], []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            forward()
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = timing.measure(forward, device="cpu", repeats=n, reset=lambda: g.set_state(state))
        total = time.perf_counter() - t0
        outside.append((total - sum(m.wall_s)) / sum(m.wall_s))
        bare_vs_timed.append(total / bare - 1)
    noop = timing.measure(lambda: None, device="cpu", repeats=1000).wall_s
    timer_cost = statistics.median(noop) / statistics.median(m.wall_s)
    overhead = statistics.median(outside) + timer_cost
    benchmark.extra_info.update(
        overhead_frac=overhead,
        outside_frac=statistics.median(outside),
        timer_frac=timer_cost,
        bare_vs_timed=statistics.median(bare_vs_timed),
    )
    print(
        f"\nharness overhead {overhead * 100:.3f} % = outside the timed regions "
        f"{statistics.median(outside) * 100:.3f} % + timer {timer_cost * 100:.4f} % "
        f"(no-op region {statistics.median(noop) * 1e6:.2f} us; "
        f"call {statistics.median(m.wall_s) * 1e3:.2f} ms); "
        f"bare vs timed loop {statistics.median(bare_vs_timed) * 100:+.2f} % "
        f"(rounds {', '.join(f'{f * 100:+.1f}' for f in bare_vs_timed)} %)"
    )
    benchmark.pedantic(forward, rounds=20, warmup_rounds=3)
    assert overhead <= 0.02
