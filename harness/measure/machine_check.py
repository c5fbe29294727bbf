"""``dlmbench check-machine``: what would make timings unreliable on this machine (pyperf-style).

For ``--seconds`` (default 10) the command watches the machine without doing any work itself,
then prints one section per check and a verdict:

* contention: CPU time other processes took from the cores this process may run on, per second
  (``others_cores``, as :func:`harness.measure.contention.window_columns` defines it), against
  :attr:`~harness.measure.contention.TrustThresholds.max_other_cores`;
* the busiest other processes (``/proc/<pid>/stat`` utime + stime at both ends of the window);
* steal time (the 8th cpu field of ``/proc/stat``: CPU time other virtual machines took);
* the 1-minute load average;
* CPU frequency and governor, where the kernel exposes them (a governor other than
  ``performance`` lets the clock, and so the timings, vary);
* threads: ``torch.get_num_threads()`` against the cores of our affinity and the cores not busy
  with others (OpenMP oversubscription), and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``;
* on CUDA, other compute processes on the GPU and its clock-throttle reasons (NVML).

Exit code: 0 when nothing seen would make timings unreliable ("timings here look reliable"), 1
when something would ("timings here may be unreliable: <reasons>"); 2 for a bad ``--seconds``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.measure.contention import (
    TrustThresholds,
    busy_seconds,
    cpu_governor,
    cpu_mhz,
    gpu_columns,
    load_1m,
    our_cpus,
    own_seconds,
)

MAX_SECONDS = 600.0
"""Longest window ``--seconds`` accepts."""

TOP_N = 5
"""How many of the busiest other processes the report lists."""

MAX_STEAL_SHARE = 0.05
"""Largest share of our cores' time that other virtual machines may steal."""

POLL_S = 0.5
"""How often the CPU clock is read during the window."""

NOT_EXPOSED = "not exposed (virtual machine?)"

Check = tuple[list[str], list[str]]
"""What each check returns: report lines, and problems (reasons timings may be unreliable)."""


@dataclass
class Snapshot:
    """One reading of the machine at an end of the window."""

    t: float
    stat: str
    own_s: float
    load: float
    procs: dict[int, tuple[str, float]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_pid_stat(text: str, hz: int | None = None) -> tuple[str, float]:
    """``(comm, utime + stime in seconds)`` of one ``/proc/<pid>/stat`` line.

    The name is between the first ``(`` and the last ``)`` (it may hold spaces and parentheses);
    utime and stime are fields 14 and 15, the 12th and 13th after the name.

    Raises:
        ValueError: the text is not a stat line.
    """
    lo, hi = text.index("("), text.rindex(")")
    rest = text[hi + 1 :].split()
    ticks = int(rest[11]) + int(rest[12])
    return text[lo + 1 : hi], ticks / (hz or _clock_ticks())


def read_process_times(proc: str | Path = "/proc") -> dict[int, tuple[str, float]]:
    """``pid → (comm, CPU seconds)`` of every process under ``proc`` (vanished ones skipped)."""
    hz = _clock_ticks()
    out = {}
    try:
        names = os.listdir(proc)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            out[int(name)] = parse_pid_stat(Path(proc, name, "stat").read_text(), hz)
        except (OSError, ValueError, IndexError):
            continue
    return out


def top_processes(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    n: int = TOP_N,
    exclude: frozenset[int] = frozenset(),
) -> list[tuple[int, str, float]]:
    """The ``n`` processes that used most CPU between two readings: ``(pid, comm, seconds)``.

    A pid gone by ``after`` is skipped; one new in ``after`` started in the window, so all its
    time counts. Pids in ``exclude`` (ours) and processes that used no CPU are left out.
    """
    used = []
    for pid, (comm, secs) in after.items():
        if pid in exclude:
            continue
        delta = secs - before[pid][1] if pid in before else secs
        if delta > 0:
            used.append((pid, comm, delta))
    return sorted(used, key=lambda r: (-r[2], r[0]))[:n]


def steal_ticks(cpus: list[int], stat: str) -> tuple[int, int] | None:
    """``(steal, total)`` ticks of ``cpus`` in ``/proc/stat`` text (None: steal not shown)."""
    want = {f"cpu{i}" for i in cpus}
    steal = total = 0
    seen = False
    for line in stat.splitlines():
        parts = line.split()
        if not parts or parts[0] not in want or len(parts) < 9:
            continue
        values = [int(v) for v in parts[1:]]
        steal += values[7]
        total += sum(values[:8])  # guest time is already inside user
        seen = True
    return (steal, total) if seen else None


def snapshot(cpus: list[int]) -> Snapshot:
    """Read every counter once."""
    try:
        stat = Path("/proc/stat").read_text()
    except OSError:
        stat = ""
    procs = read_process_times()
    return Snapshot(time.perf_counter(), stat, own_seconds(), load_1m(), procs)


def sample_window(cpus: list[int], seconds: float) -> tuple[Snapshot, Snapshot, list[float]]:
    """Snapshots at both ends of a ``seconds`` window, and the CPU clocks read during it."""
    mhz = list(cpu_mhz(cpus))
    before = snapshot(cpus)
    end = before.t + seconds
    while (left := end - time.perf_counter()) > 0:
        time.sleep(min(POLL_S, left))
        mhz.extend(cpu_mhz(cpus))
    return before, snapshot(cpus), mhz


def others_cores(cpus: list[int], before: Snapshot, after: Snapshot) -> float:
    """CPU time others took from ``cpus`` per second (``contention.window_columns``' way)."""
    busy = busy_seconds(cpus, after.stat) - busy_seconds(cpus, before.stat)
    others = busy - (after.own_s - before.own_s)
    span = after.t - before.t
    if math.isnan(others) or span <= 0:
        return math.nan
    return max(0.0, others) / span


# ---------------------------------------------------------------------------------------------
# checks: each returns (lines, problems)
# ---------------------------------------------------------------------------------------------


def check_contention(others: float, th: TrustThresholds) -> Check:
    """Other processes' CPU on our cores against ``th.max_other_cores``."""
    if math.isnan(others):
        return ["contention: /proc/stat not readable"], []
    line = (
        f"contention: other processes used {others:.2f} cores of ours (limit {th.max_other_cores})"
    )
    if others > th.max_other_cores:
        return [line], [f"other processes used {others:.2f} cores of ours"]
    return [line], []


def check_processes(before: Snapshot, after: Snapshot, others: float) -> Check:
    """The busiest other processes in the window (informative: contention judges them).

    When ``others`` (cores) exceeds what every visible process used by more than a quarter core,
    the rest went to processes not seen (short-lived, in another container, or the host).
    """
    used = top_processes(before.procs, after.procs, n=len(after.procs), exclude=_ours())
    span = max(after.t - before.t, 1e-9)
    if not used:
        lines = ["busiest other processes: none used CPU in the window"]
    else:
        lines = ["busiest other processes (CPU seconds in the window, cores):"]
        lines += [
            f"  {pid:>8}  {comm:<20} {secs:7.2f} s  {secs / span:5.2f}"
            for pid, comm, secs in used[:TOP_N]
        ]
    unseen = others - sum(secs for _, _, secs in used) / span
    if unseen > 0.25:
        lines.append(
            f"  {unseen:.2f} cores by processes not seen (short-lived, other container, host)"
        )
    return lines, []


def _ours() -> frozenset[int]:
    return frozenset({os.getpid()})


def check_steal(cpus: list[int], before: Snapshot, after: Snapshot) -> Check:
    """Share of our cores' time stolen by other virtual machines, where visible."""
    a, b = steal_ticks(cpus, before.stat), steal_ticks(cpus, after.stat)
    if a is None or b is None:
        return ["steal time: not visible"], []
    total = b[1] - a[1]
    share = (b[0] - a[0]) / total if total > 0 else 0.0
    line = f"steal time: {share:.1%} of our cores' time (limit {MAX_STEAL_SHARE:.0%})"
    if share > MAX_STEAL_SHARE:
        return [line], [f"other virtual machines stole {share:.1%} of our CPU time"]
    return [line], []


def check_load(before: Snapshot, after: Snapshot) -> Check:
    """The 1-minute load average against the machine's CPU count."""
    n = os.cpu_count() or 1
    if math.isnan(after.load):
        return ["load average: unknown"], []
    line = f"load average (1 min): {before.load:.2f} -> {after.load:.2f} on {n} CPUs"
    if after.load > n:
        return [line], [f"load average {after.load:.2f} exceeds the {n} CPUs"]
    return [line], []


def check_frequency(cpus: list[int], mhz: list[float], th: TrustThresholds) -> Check:
    """CPU clock range over the window and the governor, where exposed."""
    lines, problems = [], []
    if mhz:
        lo, hi = min(mhz), max(mhz)
        lines.append(f"CPU frequency: {lo:.0f}-{hi:.0f} MHz over the window")
        if hi > 0 and lo / hi < th.min_mhz_fraction:
            problems.append(f"CPU clock varied from {lo:.0f} to {hi:.0f} MHz")
    else:
        lines.append(f"CPU frequency: {NOT_EXPOSED}")
    governor = cpu_governor(cpus)
    lines.append(f"CPU governor: {governor or NOT_EXPOSED}")
    if governor is not None and governor != "performance":
        problems.append(f"CPU governor is {governor!r}, not 'performance' (the clock may vary)")
    return lines, problems


def check_threads(cpus: list[int], others: float) -> Check:
    """Torch's thread count against our cores and the cores not busy with others.

    A core counts as busy with others per whole core of ``others`` (rounded), so noise under half
    a core does not take one away.
    """
    env = ", ".join(
        f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    )
    try:
        import torch
    except ImportError:
        return [f"threads: torch not installed; {env}"], []
    threads = torch.get_num_threads()
    busy = 0 if math.isnan(others) else min(len(cpus), round(others))
    idle = len(cpus) - busy
    lines = [
        f"threads: torch {threads}, cores in our affinity {len(cpus)}, idle cores {idle}; {env}"
    ]
    if threads > idle:
        return lines, [f"OpenMP oversubscription: {threads} threads on {idle} idle cores"]
    return lines, []


def check_gpu() -> Check:
    """Other compute processes and throttle reasons of ``cuda:0`` (NVML), on CUDA only."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        return ["GPU: no CUDA device"], []
    from harness.measure.energy import nvml_module

    nvml = nvml_module()
    if nvml is None:
        return ["GPU: NVML not available (install nvidia-ml-py)"], []
    cols = gpu_columns("cuda:0", nvml)
    others, throttle = cols["gpu_other_processes"], cols["gpu_throttle"]
    reasons = "unknown" if math.isnan(throttle) else hex(int(throttle))
    lines = [
        f"GPU cuda:0: SM clock {cols['gpu_sm_mhz']:.0f} MHz, other compute processes "
        f"{others:.0f}, throttle reasons {reasons}"
    ]
    problems = []
    if others > 0:
        problems.append(f"{others:.0f} other compute processes on the GPU")
    if throttle > 0:
        problems.append(f"GPU clock throttled (NVML reasons {int(throttle):#x})")
    return lines, problems


def _preload_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        pass


def verdict(problems: list[str]) -> str:
    """The last line of the report."""
    if not problems:
        return "timings here look reliable"
    return "timings here may be unreliable: " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``check-machine [--seconds S]`` to ``subparsers``."""
    p = subparsers.add_parser(
        "check-machine",
        help="report what would make timings unreliable here (load, busy processes, frequency "
        "scaling, threads)",
        description="Watch the machine for a few seconds and report what would make timings "
        "unreliable. Exit code 0: nothing seen; 1: something would.",
    )
    p.add_argument(
        "--seconds", type=float, default=10.0, metavar="S",
        help=f"how long to watch (default 10; > 0 and at most {MAX_SECONDS:.0f})",
    )  # fmt: skip
    p.set_defaults(fn=cmd_check_machine)
    return p


def cmd_check_machine(args: argparse.Namespace) -> int:
    """Print the report; 0 when nothing would make timings unreliable, 1 when something would.

    Raises:
        ConfigError: ``--seconds`` is not in (0, 600].
    """
    seconds = args.seconds
    if not 0 < seconds <= MAX_SECONDS:  # also refuses NaN
        from dlmcore.errors import ConfigError

        raise ConfigError(
            [f"--seconds must be > 0 and at most {MAX_SECONDS:.0f}, got {seconds!r}"],
            "Invalid --seconds; nothing was measured",
        )
    th = TrustThresholds()
    cpus = our_cpus()
    _preload_torch()  # so that importing it (threads, CUDA checks) does not happen in the window
    print(f"check-machine: watching CPUs {cpus} for {seconds:g} s ...", flush=True)
    before, after, mhz = sample_window(cpus, seconds)
    others = others_cores(cpus, before, after)
    checks = [
        check_contention(others, th),
        check_processes(before, after, others),
        check_steal(cpus, before, after),
        check_load(before, after),
        check_frequency(cpus, mhz, th),
        check_threads(cpus, others),
        check_gpu(),
    ]
    problems = []
    for lines, found in checks:
        print("\n".join(lines))
        problems += found
    print(verdict(problems))
    return 1 if problems else 0
