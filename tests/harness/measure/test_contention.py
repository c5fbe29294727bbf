"""Contention columns and the trust verdict (harness/measure/contention.py)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import results
from harness.measure import contention as ct
from harness.run.sweep import run_experiment
from tests.harness.run.test_runner import write_config

STAT = """cpu  100 0 50 1000 0 0 0 0 0 0
cpu0 {u0} 1 {s0} 500 2 3 4 {st0} 0 0
cpu1 70 0 30 500 0 0 0 0 0 0
intr 1 2 3
"""


def test_busy_seconds_counts_user_nice_system_irq_softirq_steal_of_our_cpus_only():
    hz = os.sysconf("SC_CLK_TCK")
    text = STAT.format(u0=10, s0=20, st0=5)
    # cpu0: user 10 + nice 1 + system 20 + irq 3 + softirq 4 + steal 5 (idle, iowait excluded)
    assert ct.busy_seconds([0], text) == pytest.approx(43 / hz)
    assert ct.busy_seconds([0, 1], text) == pytest.approx((43 + 100) / hz)
    assert math.isnan(ct.busy_seconds([7], text))


def test_window_columns_subtract_our_own_cpu_time():
    before = ct.CpuCounters(t=10.0, busy_s=100.0, own_s=5.0, load_1m=0.5, mhz=(2000.0,))
    after = ct.CpuCounters(t=12.0, busy_s=104.0, own_s=7.5, load_1m=1.5, mhz=(1500.0,))
    cols = ct.window_columns(before, after)
    assert cols["others_cpu_s"] == pytest.approx(1.5)  # 4 s busy, 2.5 s of it ours
    assert cols["others_cores"] == pytest.approx(0.75)  # over a 2 s window
    assert (cols["load_1m_before"], cols["load_1m_after"]) == (0.5, 1.5)
    assert (cols["cpu_mhz_min"], cols["cpu_mhz_max"]) == (1500.0, 2000.0)


def test_own_time_larger_than_busy_is_no_negative_contention():
    before = ct.CpuCounters(0.0, 10.0, 0.0, 0.0, ())
    after = ct.CpuCounters(1.0, 10.5, 0.6, 0.0, ())  # tick rounding: ours 0.6 s, busy 0.5 s
    assert ct.window_columns(before, after)["others_cpu_s"] == 0.0


@pytest.mark.parametrize(
    "row,reason",
    [
        ({"others_cores": 0.9, "wall_s_cv": 0.01, "repeats": 5}, "contention"),
        ({"others_cores": 0.0, "wall_s_cv": 0.3, "repeats": 5}, "high CV"),
        ({"others_cores": 0.0, "wall_s_cv": 0.01, "repeats": 2}, "too few repeats"),
        ({"cpu_mhz_min": 1000, "cpu_mhz_max": 3000, "repeats": 5}, "throttling"),
        ({"gpu_throttle": 4.0, "repeats": 5}, "throttling"),
        ({"gpu_other_processes": 2.0, "repeats": 5}, "contention"),
    ],
)
def test_each_threshold_makes_a_row_noisy_with_its_reason(row, reason):
    v = ct.trust_verdict(row)
    assert v["trust"] == "noisy" and reason in v["trust_reason"]


def test_a_quiet_row_is_ok_and_thresholds_are_configurable():
    row = {"others_cores": 0.1, "wall_s_cv": 0.05, "repeats": 5, "cpu_mhz_min": math.nan}
    assert ct.trust_verdict(row) == {"trust": "ok", "trust_reason": None}
    strict = ct.TrustThresholds(max_other_cores=0.05, max_cv=0.01, min_repeats=10)
    reasons = ct.trust_reasons(row, strict)
    assert [r.split(":")[0] for r in reasons] == ["contention", "high CV", "too few repeats"]


class FakeNvml:
    NVML_CLOCK_SM = 1

    class P:
        def __init__(self, pid):
            self.pid = pid

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802 -- NVML's names
        return i

    def nvmlDeviceGetClockInfo(self, h, kind):  # noqa: N802
        return 1410

    def nvmlDeviceGetComputeRunningProcesses(self, h):  # noqa: N802
        return [self.P(os.getpid()), self.P(1), self.P(2)]

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):  # noqa: N802
        return 0x1 | 0x4  # idle (ignored) + SW power cap


def test_gpu_columns_from_nvml(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cols = ct.gpu_columns("cuda:0", FakeNvml())
    assert cols == {"gpu_sm_mhz": 1410.0, "gpu_other_processes": 2.0, "gpu_throttle": 4.0}
    assert all(math.isnan(v) for v in ct.gpu_columns("cpu").values())


def cell_config(tmp_path: Path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_config(
        tmp_path,
        samplers=[{"sampler": "mdlm", "params": {"num_steps": 4}}],
        batch_sizes=[1],
        timing={"repeats": 3, "warmup": 1, "min_time_s": 1.0, "max_cv": 10.0},
    )


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_a_busy_loop_on_our_cores_makes_the_row_noisy_and_its_absence_ok(tmp_path):
    """Acceptance (issue 14): a cell timed while another process spins on one of our cores is
    ``noisy`` naming contention; the same cell, the loop stopped, is ``ok``."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        noisy = results.load_results(
            run_experiment(cell_config(tmp_path / "a"), progress=False, run_id="busy")
        ).iloc[0]
    finally:
        busy.kill()
        busy.wait()
    time.sleep(0.3)
    quiet = results.load_results(
        run_experiment(cell_config(tmp_path / "b"), progress=False, run_id="quiet")
    ).iloc[0]
    assert noisy["trust"] == "noisy" and "contention" in noisy["trust_reason"]
    assert noisy["others_cores"] > 0.5
    assert quiet["trust"] == "ok", quiet["trust_reason"]
    assert quiet["others_cores"] < 0.25


def test_demo_banner_names_the_contended_cells_only():
    import pandas as pd

    from harness.demo import contention_banner

    df = pd.DataFrame(
        {
            "status": ["ok", "ok", "ok", "error"],
            "trust_reason": [None, "contention: other processes used 0.9 cores", "high CV", None],
            "others_cores": [0.0, 0.9, 0.1, 2.0],
        }
    )
    banner = contention_banner(df)
    assert banner.startswith("WARNING: 1 of 3 cells") and "0.90 cores" in banner
    assert contention_banner(df.assign(trust_reason=None)) is None


def readings(*values):
    """A probe returning ``values`` in turn (others_cores per look), counting its calls."""
    it = iter(values)

    def probe():
        probe.calls += 1
        return next(it)

    probe.calls = 0
    return probe


def test_wait_until_quiet_returns_at_the_first_quiet_look_or_at_the_limit():
    probe = readings(0.9, 0.8, 0.1)
    assert ct.wait_until_quiet(0.25, 60.0, probe)[:2] == (True, 0.1) and probe.calls == 3
    probe = readings(0.9, 0.9)
    quiet, others, _ = ct.wait_until_quiet(0.25, 0.0, probe)
    assert (quiet, others, probe.calls) == (False, 0.9, 1)
    assert ct.wait_until_quiet(0.25, 0.0, readings(math.nan))[0]  # unknown: do not block


def contention_cell(tmp_path: Path, policy: str):
    from harness.run.experiment import load_experiment

    path = write_config(
        tmp_path, samplers=[{"sampler": "mdlm", "params": {"num_steps": 2}}], batch_sizes=[1],
        timing={"repeats": 3, "warmup": 1, "contention": policy, "max_wait_s": 0.0},
    )  # fmt: skip
    return load_experiment(path)[1][0]


@pytest.mark.parametrize("policy", ["warn", "wait", "refuse"])
def test_contention_policy_before_a_cell(policy, tmp_path, capsys):
    from harness.run.runner import contention_problem

    cell = contention_cell(tmp_path, policy)
    probe = readings(0.9, 0.9)
    reason = contention_problem(cell, probe)
    if policy == "refuse":
        assert reason.startswith("Skipped: other processes used 0.90 cores") and probe.calls == 1
    else:
        assert reason is None
        assert probe.calls == (0 if policy == "warn" else 1)
    if policy == "wait":
        assert "timing it anyway" in capsys.readouterr().err
    assert contention_problem(cell, readings(0.0)) is None


def test_policy_fields_do_not_change_the_cell_id(tmp_path):
    ids = {contention_cell(tmp_path, p).cell_id for p in ("warn", "wait", "refuse")}
    assert len(ids) == 1


def test_oversubscription_is_said_loudly_at_the_start_of_a_cpu_sweep(tmp_path, capsys):
    from harness.run.executors import warn_oversubscription
    from harness.run.experiment import load_experiment

    exp, _ = load_experiment(cell_config(tmp_path))
    threads = __import__("torch").get_num_threads()
    warn_oversubscription(exp, lambda: float(len(ct.our_cpus())))  # every core busy elsewhere
    assert f"{threads} torch threads but only 0 idle core(s)" in capsys.readouterr().err
    warn_oversubscription(exp, lambda: 0.0)
    assert capsys.readouterr().err == ""
    assert ct.oversubscription_warning(2, 0.4, cpus=2) is None  # under half a core: noise
    assert ct.oversubscription_warning(2, 0.6, cpus=2).startswith("2 torch threads but only 1")
