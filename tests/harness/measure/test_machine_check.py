import argparse
import math
import os
import subprocess
import sys
import time

import pytest

from dlmcore.errors import ConfigError
from harness.measure import machine_check as mc
from harness.measure.contention import TrustThresholds


def _parse(*argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    mc.add_parser(sub)
    return p.parse_args(["check-machine", *argv])


def _stat_line(pid, comm, utime, stime):
    # fields 3.. after the name: state, ppid, pgrp, session, tty, tpgid, flags, minflt, cminflt,
    # majflt, cmajflt, utime (14), stime (15), cutime, cstime, ...
    rest = ["R", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime)]
    return f"{pid} ({comm}) " + " ".join(rest + ["7", "9", "20", "0", "1"]) + "\n"


def _write_proc(root, procs):
    for pid, (comm, ut, st) in procs.items():
        (root / str(pid)).mkdir(parents=True, exist_ok=True)
        (root / str(pid) / "stat").write_text(_stat_line(pid, comm, ut, st))


def test_parse_pid_stat_name_with_spaces_and_parens():
    comm, secs = mc.parse_pid_stat(_stat_line(42, "my (odd) proc", 150, 50), hz=100)
    assert comm == "my (odd) proc"
    assert secs == pytest.approx(2.0)


def test_top_processes_from_synthetic_proc(tmp_path):
    hz = os.sysconf("SC_CLK_TCK")
    start = {
        10: ("idle", 100, 100),
        11: ("busy", 1000, 0),
        12: ("gone", 5, 5),
        13: ("mild", 0, 10),
        99: ("self", 0, 0),
    }
    end = {
        10: ("idle", 100, 100),  # no CPU in the window: left out
        11: ("busy", 1000 + 3 * hz, hz),  # 4 s
        13: ("mild", hz // 2, 10),  # 0.5 s
        14: ("new", hz, 0),  # started in the window: 1 s, all of it counts
        99: ("self", 10 * hz, 0),  # excluded
    }
    before_dir, after_dir = tmp_path / "a", tmp_path / "b"
    _write_proc(before_dir, start)
    _write_proc(after_dir, end)
    (after_dir / "self").mkdir()  # non-numeric entries are ignored
    before = mc.read_process_times(before_dir)
    after = mc.read_process_times(after_dir)
    assert set(before) == {10, 11, 12, 13, 99}
    top = mc.top_processes(before, after, exclude=frozenset({99}))
    # expected deltas, computed from the tick counts above
    expected = [(11, "busy", 4.0), (14, "new", 1.0), (13, "mild", (hz // 2) / hz)]
    assert [(p, c) for p, c, _ in top] == [(p, c) for p, c, _ in expected]
    for (_, _, got), (_, _, want) in zip(top, expected):
        assert got == pytest.approx(want)
    assert len(mc.top_processes(before, after, n=1)) == 1


def test_top_processes_keeps_five():
    before = {i: (f"p{i}", 0.0) for i in range(10)}
    after = {i: (f"p{i}", float(i)) for i in range(10)}
    top = mc.top_processes(before, after)
    assert [p for p, _, _ in top] == [9, 8, 7, 6, 5]


def test_steal_ticks_and_visibility():
    stat = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 0 10 70 0 0 0 10 0 0\ncpu1 1 1 1 1 1 1 1 1 0 0\n"
    assert mc.steal_ticks([0], stat) == (10, 100)
    assert mc.steal_ticks([0, 1], stat) == (11, 108)
    assert mc.steal_ticks([0], "cpu0 1 2 3 4\n") is None


def test_threads_check_flags_oversubscription(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    lines, problems = mc.check_threads([0, 1, 2, 3], others=1.2)
    assert problems == ["OpenMP oversubscription: 4 threads on 3 idle cores"]
    assert "OMP_NUM_THREADS" in lines[0]
    assert mc.check_threads([0, 1, 2, 3], others=0.3)[1] == []


def test_frequency_check_governor_and_not_exposed(monkeypatch):
    monkeypatch.setattr(mc, "cpu_governor", lambda cpus: "powersave")
    lines, problems = mc.check_frequency([0], [2000.0, 3000.0], TrustThresholds())
    assert any("powersave" in p for p in problems)
    assert any("2000 to 3000" in p for p in problems)
    monkeypatch.setattr(mc, "cpu_governor", lambda cpus: None)
    lines, problems = mc.check_frequency([0], [], TrustThresholds())
    assert problems == []
    assert all("not exposed (virtual machine?)" in line for line in lines)


def test_contention_threshold_and_verdict():
    th = TrustThresholds()
    assert mc.check_contention(th.max_other_cores / 2, th)[1] == []
    assert mc.check_contention(th.max_other_cores * 2, th)[1]
    assert mc.check_contention(math.nan, th)[1] == []
    assert mc.verdict([]) == "timings here look reliable"
    assert mc.verdict(["a", "b"]) == "timings here may be unreliable: a; b"


def test_help_line():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    mc.add_parser(sub)
    assert sub._choices_actions[0].help == (
        "report what would make timings unreliable here (load, busy processes, frequency "
        "scaling, threads)"
    )
    assert _parse().seconds == 10.0


@pytest.mark.parametrize("bad", ["0", "-1", "601", "nan"])
def test_bad_seconds_raise_config_error(bad):
    args = _parse("--seconds", bad)
    with pytest.raises(ConfigError, match="--seconds"):
        args.fn(args)


def test_real_run_sees_a_busy_loop(capsys):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        args = _parse("--seconds", "0.5")
        code = args.fn(args)
    finally:
        busy.kill()
        busy.wait()
    out = capsys.readouterr().out
    assert code == 1
    top = out.split("busiest other processes")[1].split("steal time")[0]
    assert f" {busy.pid} " in top
    assert "timings here may be unreliable" in out.splitlines()[-1]
