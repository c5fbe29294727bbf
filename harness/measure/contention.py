"""What the machine was doing while a cell was timed, and whether its timing can be trusted.

A timing taken while other processes use the cores it runs on can be many times too slow (two
torch threads on a 2-core box with one core taken fall into OpenMP's oversubscription trap), and
``wall_s_cv`` does not reveal it. :class:`ContentionMeter` is opened around the timed repeats
(like the energy meter) and reads the operating system's counters at both ends:

* ``/proc/stat``: busy time (user, nice, system, irq, softirq, steal) of the CPUs this process may
  run on; minus this process's own CPU time (``os.times``) it is the CPU time *other* processes
  (and, as ``steal``, other virtual machines) took from our cores: ``others_cpu_s``, and per
  second of the window ``others_cores`` (1.0 = one whole core busy with someone else's work);
* ``/proc/loadavg``: ``load_1m_before`` / ``load_1m_after`` (this process's threads included);
* ``/sys/devices/system/cpu/cpuN/cpufreq``: ``cpu_mhz_min`` over our cores and ``cpu_governor``,
  where the kernel exposes them (NaN / None in most virtual machines);
* NVML on CUDA: ``gpu_sm_mhz`` at the end of the window, ``gpu_other_processes`` (compute
  processes on the GPU other than ours), ``gpu_throttle`` (NVML's clock-throttle reasons bitmask,
  idle bit cleared).

:func:`trust_verdict` turns those columns, the repeats' coefficient of variation and the repeat
count into ``trust`` (``ok`` / ``noisy``) and ``trust_reason``, with the thresholds of
:class:`TrustThresholds` (set per experiment under ``timing:``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
"""/proc/stat cpu fields counted as busy: user, nice, system, irq, softirq, steal."""

NVML_IDLE_THROTTLE = 0x1
"""NVML's ``clocksThrottleReasonGpuIdle`` bit: not a slowdown of our work."""


@dataclass(frozen=True)
class TrustThresholds:
    """When a timed row is ``noisy`` rather than ``ok``.

    Attributes:
        max_other_cores: most CPU other processes may use on our cores during the timed window,
            in cores (0.25 = a quarter of one core on average).
        max_cv: largest coefficient of variation of the timed repeats.
        min_repeats: fewest timed repeats whose median (and CI) we trust.
        min_mhz_fraction: lowest CPU clock, as a fraction of the highest seen in the window,
            before the row counts as throttled (where the clock is readable).
    """

    max_other_cores: float = 0.25
    max_cv: float = 0.10
    min_repeats: int = 3
    min_mhz_fraction: float = 0.8


@dataclass(frozen=True)
class CpuCounters:
    """One reading of the counters (seconds; NaN where unreadable)."""

    t: float
    busy_s: float
    own_s: float
    load_1m: float
    mhz: tuple[float, ...]


def our_cpus() -> list[int]:
    """The CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def busy_seconds(cpus: list[int], stat: str | None = None) -> float:
    """Busy time of ``cpus`` since boot, from ``/proc/stat`` (NaN where unreadable)."""
    try:
        text = stat if stat is not None else Path("/proc/stat").read_text()
    except OSError:
        return math.nan
    want = {f"cpu{i}" for i in cpus}
    ticks = 0
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in want:
            values = [int(v) for v in parts[1:]]
            ticks += sum(values[i] for i in BUSY_FIELDS if i < len(values))
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return ticks / hz if ticks else math.nan


def own_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    t = os.times()
    return t.user + t.system


def load_1m() -> float:
    """The 1-minute load average (NaN where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def cpu_mhz(cpus: list[int]) -> tuple[float, ...]:
    """Current clock of each readable CPU of ``cpus``, in MHz (empty where not exposed)."""
    out = []
    for i in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_cur_freq")
        try:
            out.append(int(path.read_text()) / 1000.0)
        except (OSError, ValueError):
            continue
    return tuple(out)


def cpu_governor(cpus: list[int]) -> str | None:
    """The frequency governor(s) of ``cpus`` (e.g. ``performance``), or None where not exposed."""
    names = set()
    for i in cpus:
        try:
            names.add(Path(f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_governor").read_text())
        except OSError:
            continue
    return ",".join(sorted(n.strip() for n in names)) or None


def read_counters(cpus: list[int]) -> CpuCounters:
    """One reading of every CPU counter."""
    return CpuCounters(time.perf_counter(), busy_seconds(cpus), own_seconds(), load_1m(),
                       cpu_mhz(cpus))  # fmt: skip


def window_columns(before: CpuCounters, after: CpuCounters) -> dict[str, Any]:
    """The contention columns of the window between two readings."""
    span = after.t - before.t
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    others = max(0.0, others) if not math.isnan(others) else math.nan
    mhz = before.mhz + after.mhz
    return {
        "load_1m_before": before.load_1m,
        "load_1m_after": after.load_1m,
        "others_cpu_s": others,
        "others_cores": others / span if span > 0 else math.nan,
        "cpu_mhz_min": min(mhz) if mhz else math.nan,
        "cpu_mhz_max": max(mhz) if mhz else math.nan,
    }


class ContentionMeter:
    """Opened around the timed repeats (``start``/``stop``, like the energy meter)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cpus = our_cpus()
        self._before: CpuCounters | None = None

    def start(self) -> None:
        """Read the counters at the start of the window."""
        self._before = read_counters(self.cpus)

    def stop(self) -> dict[str, Any]:
        """Read them again; return the window's contention columns."""
        after = read_counters(self.cpus)
        row = window_columns(self._before or after, after)
        row["cpu_governor"] = cpu_governor(self.cpus)
        row.update(gpu_columns(self.device))
        return row


def gpu_columns(device: str, nvml: Any = None) -> dict[str, Any]:
    """SM clock, other compute processes and throttle reasons of a CUDA device (NaN elsewhere)."""
    out: dict[str, Any] = {"gpu_sm_mhz": math.nan, "gpu_other_processes": math.nan,
                           "gpu_throttle": math.nan}  # fmt: skip
    if not device.startswith("cuda"):
        return out
    from harness.measure.energy import nvml_handle, nvml_module

    nvml = nvml or nvml_module()
    if nvml is None:
        return out
    try:
        handle = nvml_handle(nvml, device)
        out["gpu_sm_mhz"] = float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        out["gpu_other_processes"] = float(sum(p.pid != os.getpid() for p in procs))
        reasons = nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
        out["gpu_throttle"] = float(int(reasons) & ~NVML_IDLE_THROTTLE)
    except Exception:  # noqa: BLE001 -- NVML errors leave the columns NaN, never fail a cell
        pass
    return out


METER_COLUMNS = [
    "load_1m_before", "load_1m_after", "others_cpu_s", "others_cores", "cpu_mhz_min",
    "cpu_mhz_max", "cpu_governor", "gpu_sm_mhz", "gpu_other_processes", "gpu_throttle",
]  # fmt: skip
"""The columns :class:`ContentionMeter` reads (``trust`` and ``trust_reason`` are derived)."""


def _num(row: dict[str, Any], key: str) -> float:
    v = row.get(key)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def trust_reasons(row: dict[str, Any], th: TrustThresholds) -> list[str]:
    """Why a row's timing is not to be trusted (empty: ``ok``)."""
    out = []
    others = _num(row, "others_cores")
    if others > th.max_other_cores:
        out.append(
            f"contention: other processes used {others:.2f} cores of ours while timed "
            f"(limit {th.max_other_cores})"
        )
    cv = _num(row, "wall_s_cv")
    if cv > th.max_cv:
        out.append(f"high CV: repeats vary by {cv:.0%} (limit {th.max_cv:.0%})")
    repeats = _num(row, "repeats")
    if repeats < th.min_repeats:
        out.append(f"too few repeats: {repeats:.0f} (need {th.min_repeats} for a median and CI)")
    lo, hi = _num(row, "cpu_mhz_min"), _num(row, "cpu_mhz_max")
    if hi > 0 and lo / hi < th.min_mhz_fraction:
        out.append(f"throttling: CPU clock fell to {lo:.0f} of {hi:.0f} MHz")
    if _num(row, "gpu_throttle") > 0:
        out.append(f"throttling: NVML throttle reasons {int(_num(row, 'gpu_throttle')):#x}")
    if _num(row, "gpu_other_processes") > 0:
        out.append(f"contention: {int(_num(row, 'gpu_other_processes'))} other GPU processes")
    return out


def trust_verdict(row: dict[str, Any], th: TrustThresholds | None = None) -> dict[str, Any]:
    """``trust`` (``ok`` / ``noisy``) and ``trust_reason`` ("; "-joined, or None) of a row."""
    reasons = trust_reasons(row, th or TrustThresholds())
    return {"trust": "noisy" if reasons else "ok", "trust_reason": "; ".join(reasons) or None}


CONTENTION_POLICIES = ("warn", "wait", "refuse")
"""``timing.contention``: what the runner does about other processes on our cores."""

PROBE_S = 0.5
"""Length of one look at the cores before a cell is timed (``wait`` / ``refuse``)."""


def probe_others_cores(seconds: float = PROBE_S) -> float:
    """Cores of ours that other processes used over the next ``seconds`` (NaN where unknown)."""
    cpus = our_cpus()
    before = read_counters(cpus)
    time.sleep(seconds)
    return window_columns(before, read_counters(cpus))["others_cores"]


def wait_until_quiet(
    limit: float, max_wait_s: float, probe: Any = probe_others_cores
) -> tuple[bool, float, float]:
    """Probe until other processes use at most ``limit`` cores of ours, or ``max_wait_s`` passes.

    Returns:
        ``(quiet, last others_cores, seconds waited)``; an unknown reading counts as quiet.
    """
    start = time.perf_counter()
    while True:
        others = probe()
        waited = time.perf_counter() - start
        if not others > limit:
            return True, others, waited
        if waited >= max_wait_s:
            return False, others, waited


def idle_cores(others: float, cpus: int | None = None) -> int:
    """Cores of ours left idle when others use ``others`` cores (half a core of noise is kept)."""
    n = cpus if cpus is not None else len(our_cpus())
    return max(0, n - round(others)) if not math.isnan(others) else n


def oversubscription_warning(threads: int, others: float, cpus: int | None = None) -> str | None:
    """A warning when ``threads`` exceed the idle cores (OpenMP's oversubscription trap)."""
    idle = idle_cores(others, cpus)
    if threads <= idle:
        return None
    return (
        f"{threads} torch threads but only {idle} idle core(s): other processes use "
        f"{others:.2f} cores of ours. Timings may be many times too slow (OpenMP "
        "oversubscription); stop the other work, or set OMP_NUM_THREADS / torch threads to the "
        "idle cores (`dlmbench check-machine` shows what is busy)."
    )
