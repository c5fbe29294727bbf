"""EnergyMeter's three paths with a fake NVML and a fake clock (measurement.md §8).

Oracles: the fake counter's preset readings; for power integration, the exact integral of a
power that is linear in time (the trapezoidal rule is exact for it, wherever the side thread
happens to sample); NaN, never 0, without NVML.
"""

from __future__ import annotations

import math
import threading

import pytest

from harness.measure import energy
from harness.measure.energy import EnergyMeter, nvml_handle, trapezoid_j


class NVMLError(Exception):
    pass


class FakeClock:
    """perf_counter advances ``step`` seconds per read; sleep advances the given time."""

    def __init__(self, step: float = 0.5) -> None:
        self.t, self.step = 100.0, step

    def perf_counter(self) -> float:
        self.t += self.step
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class FakeNVML:
    """The subset of pynvml the meter uses; ``counter`` / ``power`` None = not supported."""

    NVMLError = NVMLError
    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    def __init__(self, clock, counter=None, power_w=None, limit_mw=300_000):
        self.clock, self.counter, self.power_w, self.limit_mw = clock, counter, power_w, limit_mw
        self.handles = []

    def nvmlDeviceGetHandleByIndex(self, i):
        self.handles.append(("index", i))
        return ("h", i)

    def nvmlDeviceGetHandleByUUID(self, u):
        self.handles.append(("uuid", u))
        return ("h", u)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.counter is None:
            raise NVMLError("Not Supported")
        return self.counter.pop(0)

    def nvmlDeviceGetPowerUsage(self, h):
        if self.power_w is None:
            raise NVMLError("Not Supported")
        return 1000.0 * self.power_w(self.clock.t)  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self.limit_mw

    def nvmlDeviceGetClockInfo(self, h, kind):
        if kind == self.NVML_CLOCK_MEM:
            raise NVMLError("Not Supported")
        return 1980


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(energy, "time", c)
    return c


def assert_nan_energy(row):
    for k in ("energy_j", "power_w_mean", "energy_above_idle_j"):
        assert math.isnan(row[k]), f"{k} must be NaN, never 0, got {row[k]}"
    assert row["energy_method"] == "none"


def test_counter_path_difference_of_readings(clock):
    nv = FakeNVML(clock, counter=[5_000, 5_000, 355_000])  # probe, start, stop (mJ)
    meter = EnergyMeter("cuda:0", nvml=nv)
    meter.start()
    row = meter.stop()
    assert row["energy_method"] == "nvml_counter"
    assert row["energy_j"] == pytest.approx(350.0)
    assert row["duration_s"] == pytest.approx(clock.step)
    assert row["power_w_mean"] == pytest.approx(350.0 / clock.step)
    assert row["energy_window_ok"] is False  # 0.5 s < MIN_COUNTER_WINDOW_S: flagged
    assert row["power_limit_w"] == 300.0 and row["sm_clock_mhz"] == 1980
    assert math.isnan(row["mem_clock_mhz"]) and math.isnan(row["idle_power_w"])


def test_counter_path_long_window_and_idle_subtraction(clock):
    clock.step = 2.0
    nv = FakeNVML(clock, counter=[0, 0, 200_000, 200_000, 200_000, 1_000_000])
    meter = EnergyMeter("cuda", nvml=nv)
    idle = meter.measure_idle(seconds=2.0)  # 200 J over 2 s (read) + 2 s (sleep) = 50 W
    assert idle == pytest.approx(200.0 / 4.0)
    meter.start()
    row = meter.stop()
    assert row["energy_window_ok"] is True
    assert row["energy_j"] == pytest.approx(800.0)
    assert row["idle_power_w"] == pytest.approx(50.0)
    assert row["energy_above_idle_j"] == pytest.approx(800.0 - 50.0 * 2.0)


def test_power_integration_when_the_counter_is_missing(clock):
    """Constant 120 W: the integral is 120 W × the sampled span, whenever the thread sampled."""
    clock.step = 0.01
    nv = FakeNVML(clock, counter=None, power_w=lambda t: 120.0)
    meter = EnergyMeter("cuda:0", nvml=nv, poll_s=0.001)
    meter.start()
    for _ in range(20):
        clock.sleep(0.05)  # "work" on the fake clock
        threading.Event().wait(0.002)  # real time for the side thread to sample
    row = meter.stop()
    assert row["energy_method"] == "power_integration"
    ts = sorted(t for t, _ in meter._samples)
    assert row["energy_j"] == pytest.approx(120.0 * (ts[-1] - ts[0]), rel=1e-12)
    assert row["energy_j"] > 0 and row["n_power_samples"] == len(ts) >= 2
    assert row["energy_window_ok"] == (len(ts) >= energy.MIN_POWER_SAMPLES)
    assert meter._thread is not None and not meter._thread.is_alive()


def test_trapezoid_by_hand():
    assert trapezoid_j([(0.0, 10.0), (1.0, 30.0), (3.0, 30.0)]) == 20.0 + 60.0
    assert trapezoid_j([(2.0, 5.0), (0.0, 5.0)]) == 10.0  # order-independent
    assert math.isnan(trapezoid_j([(0.0, 1.0)]))


def test_no_nvml_means_nan_never_zero(clock, monkeypatch):
    assert_nan_energy(_window(EnergyMeter("cpu")))
    assert_nan_energy(_window(EnergyMeter("cuda:0", nvml=None)))
    assert_nan_energy(_window(EnergyMeter("cuda:0", nvml=FakeNVML(clock))))  # nothing supported
    monkeypatch.setattr(energy, "nvml_module", lambda: None)  # no driver / no pynvml
    row = _window(EnergyMeter("cuda:0"))
    assert_nan_energy(row)
    assert math.isnan(row["power_limit_w"])
    assert math.isnan(EnergyMeter("cpu").measure_idle(0.0))


def _window(meter):
    meter.start()
    return meter.stop()


def test_real_nvml_absent_on_this_machine_is_handled():
    """This CPU box has no NVML library: the default constructor must not raise."""
    row = _window(EnergyMeter("cuda:0"))
    if energy.nvml_module() is None:
        assert_nan_energy(row)


def test_handle_honours_cuda_visible_devices(clock, monkeypatch):
    nv = FakeNVML(clock)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-abc")
    nvml_handle(nv, "cuda:0")
    nvml_handle(nv, "cuda:1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    nvml_handle(nv, "cuda")
    nvml_handle(nv, "cuda:2")
    assert nv.handles == [("index", 3), ("uuid", "GPU-abc"), ("index", 0), ("index", 2)]
    with pytest.raises(ValueError, match="'cpu' is not a CUDA device"):
        nvml_handle(nv, "cpu")


@pytest.mark.gpu
def test_real_gpu_window_reports_energy():
    import torch

    if not torch.cuda.is_available() or energy.nvml_module() is None:
        pytest.skip("no CUDA device with NVML")
    meter = EnergyMeter("cuda:0")
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    meter.start()
    for _ in range(200):
        a = a @ a / 64
    torch.cuda.synchronize()
    row = meter.stop()
    assert row["energy_method"] in ("nvml_counter", "power_integration")
    assert row["energy_j"] > 0 and row["power_w_mean"] > 0
