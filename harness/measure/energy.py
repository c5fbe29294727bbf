"""GPU energy over a timed window, from NVML (``measurement.md`` §8).

Three methods, picked per window in this order:

1. ``nvml_counter``: the total-energy counter (millijoules since driver load, Volta and newer),
   read at :meth:`EnergyMeter.start` and :meth:`EnergyMeter.stop`; energy is the difference. The
   counter updates every ≈ 20-100 ms, so windows shorter than :data:`MIN_COUNTER_WINDOW_S` are
   flagged (``energy_window_ok = False``): accumulate over repeats instead.
2. ``power_integration``: where the counter is missing, a side thread samples the power draw
   (milliwatts) every ``poll_s`` and integrates it with the trapezoidal rule, with one sample
   taken synchronously at each boundary.
3. ``none``: no NVML (a CPU run, no driver, no ``nvidia-ml-py``): every energy column is NaN,
   **never 0** (mlco2/codecarbon#1316 reported 0 kWh silently).

Idle power (§8.5): :meth:`EnergyMeter.measure_idle` before the cell (≥ 2 s) gives
``idle_power_w``; :meth:`EnergyMeter.stop` then also reports ``energy_above_idle_j``. The power
limit and SM / memory clocks are recorded with every window (§8.6).

The caller synchronises the device before ``start`` and before ``stop``, as for the wall timer.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

MIN_COUNTER_WINDOW_S = 1.0
"""Shortest window the energy counter resolves to a few percent (≥ 10 update periods)."""

MIN_POWER_SAMPLES = 10
"""Fewest power samples for an integrated window to count as resolved."""

_UNSET: Any = object()


def nvml_module() -> Any | None:
    """``pynvml`` (from ``nvidia-ml-py``), initialised; ``None`` when NVML cannot be used."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml raises NVMLError subclasses, or OSError without a driver
        return None
    return pynvml


def nvml_handle(nvml: Any, device: str) -> Any:
    """The NVML handle of a ``cuda[:i]`` device, honouring ``CUDA_VISIBLE_DEVICES``.

    NVML numbers GPUs physically; torch numbers the visible ones. A visible-devices entry that is
    an integer maps to that physical index, a ``GPU-…`` entry to a UUID.

    Raises:
        ValueError: ``device`` is not a CUDA device.
    """
    dev = device.split(":")
    if dev[0] != "cuda":
        raise ValueError(f"device {device!r} is not a CUDA device; NVML only sees GPUs.")
    index = int(dev[1]) if len(dev) > 1 and dev[1] else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [v for v in visible if v]
    if index < len(visible):
        entry = visible[index]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry))
        if entry.startswith(("GPU-", "MIG-")):
            return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(index)


def _try(fn: Any, *args: Any, scale: float = 1.0) -> float:
    """``fn(*args) * scale`` as a float, NaN when NVML refuses."""
    try:
        return float(fn(*args)) * scale
    except Exception:
        return math.nan


class EnergyMeter:
    """Energy of one synchronised window on one GPU.

    Args:
        device: ``cpu`` (always method ``none``) or ``cuda[:i]``.
        nvml: an NVML module (tests pass a fake); default: ``pynvml`` if usable, else none.
        poll_s: power sampling period of the integration fallback.

    Example:
        >>> meter = EnergyMeter("cpu")
        >>> meter.start(); meter.stop()["energy_method"]
        'none'
    """

    def __init__(self, device: str, *, nvml: Any = _UNSET, poll_s: float = 0.02) -> None:
        self.device = device
        self.poll_s = poll_s
        self.idle_power_w = math.nan
        self._nvml = None
        self._handle = None
        if device.split(":")[0] == "cuda":
            self._nvml = nvml_module() if nvml is _UNSET else nvml
            if self._nvml is not None:
                try:
                    self._handle = nvml_handle(self._nvml, device)
                except Exception:
                    self._nvml = None
        self._method = "none"
        self._t0 = math.nan
        self._e0 = math.nan
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- readings ------------------------------------------------------------------------

    def _energy_mj(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)

    def _power_w(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0

    def _pick_method(self) -> str:
        if self._nvml is None:
            return "none"
        try:
            self._energy_mj()
            return "nvml_counter"
        except Exception:
            pass
        try:
            self._power_w()
            return "power_integration"
        except Exception:
            return "none"

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                t = time.perf_counter()
                self._samples.append((t, self._power_w()))
            except Exception:  # a failed read leaves a gap; the trapezoid bridges it
                continue

    # ---- the window ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the window (call right after synchronising the device)."""
        self._method = self._pick_method()
        self._samples = []
        if self._method == "power_integration":
            t = time.perf_counter()
            self._samples.append((t, self._power_w()))
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample_loop, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        if self._method == "nvml_counter":
            self._e0 = self._energy_mj()

    def stop(self) -> dict[str, Any]:
        """Close the window (call right after synchronising the device).

        Returns:
            ``energy_j``, ``energy_method`` (``nvml_counter`` / ``power_integration`` / ``none``),
            ``power_w_mean`` (energy / duration), ``duration_s``, ``energy_window_ok``,
            ``n_power_samples``, ``idle_power_w``, ``energy_above_idle_j``, ``power_limit_w``,
            ``sm_clock_mhz``, ``mem_clock_mhz``. Energy and power are NaN (never 0) when the
            method is ``none``; idle columns are NaN until :meth:`measure_idle` ran.
        """
        energy, ok, n = math.nan, False, 0
        if self._method == "nvml_counter":
            e1 = _try(self._energy_mj)
            duration = time.perf_counter() - self._t0
            energy = (e1 - self._e0) / 1000.0 if e1 >= self._e0 else math.nan  # NaN: failed read
            ok = duration >= MIN_COUNTER_WINDOW_S
        elif self._method == "power_integration":
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            t_last = time.perf_counter()
            last = _try(self._power_w)
            if not math.isnan(last):
                self._samples.append((t_last, last))
            duration = time.perf_counter() - self._t0
            energy, n = trapezoid_j(self._samples), len(self._samples)
            ok = n >= MIN_POWER_SAMPLES
        else:
            duration = time.perf_counter() - self._t0
        return self._row(energy, duration, ok, n)

    def _row(self, energy: float, duration: float, ok: bool, n: int) -> dict[str, Any]:
        power = energy / duration if duration > 0 else math.nan
        return {
            "energy_j": energy,
            "energy_method": self._method,
            "power_w_mean": power,
            "duration_s": duration,
            "energy_window_ok": bool(ok),
            "n_power_samples": n,
            "idle_power_w": self.idle_power_w,
            "energy_above_idle_j": energy - self.idle_power_w * duration,
            **self.device_state(),
        }

    def measure_idle(self, seconds: float = 2.0) -> float:
        """Mean power (W) over ``seconds`` of doing nothing; stored as ``idle_power_w``.

        Run it before the cell, with the device idle (``measurement.md`` §8.5: ≥ 2 s).
        Returns NaN without NVML.
        """
        self.start()
        time.sleep(seconds)
        row = self.stop()
        self.idle_power_w = row["power_w_mean"]
        return self.idle_power_w

    def device_state(self) -> dict[str, float]:
        """Power limit (W) and current SM / memory clocks (MHz); NaN where unavailable."""
        if self._nvml is None:
            return {"power_limit_w": math.nan, "sm_clock_mhz": math.nan, "mem_clock_mhz": math.nan}
        nv, h = self._nvml, self._handle
        return {
            "power_limit_w": _try(nv.nvmlDeviceGetEnforcedPowerLimit, h, scale=1e-3),
            "sm_clock_mhz": _try(nv.nvmlDeviceGetClockInfo, h, getattr(nv, "NVML_CLOCK_SM", 1)),
            "mem_clock_mhz": _try(nv.nvmlDeviceGetClockInfo, h, getattr(nv, "NVML_CLOCK_MEM", 2)),
        }


def trapezoid_j(samples: list[tuple[float, float]]) -> float:
    """∫ P dt over (time s, power W) samples by the trapezoidal rule; NaN for < 2 samples."""
    if len(samples) < 2:
        return math.nan
    pts = sorted(samples)
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:]))
