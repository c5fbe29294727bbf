"""The ``slurm`` executor against a real Slurm cluster (opt-in: ``pytest -m slurm``).

Uses the cluster of ``$SLURM_CONF`` when ``sinfo`` answers; otherwise starts the single-node
cluster of ``scripts/slurm_local.sh`` (needs root and ``apt-get install -y slurm-wlm munge``)
for the module and stops it afterwards; otherwise skips, saying why.

Oracle: the ``local`` executor's rows and samples for the same config. The preemption test sends
Slurm's preemption warning (``scancel --signal=USR2``) to a running array task: submitit's
checkpointing requeues it, its finished cell is kept byte for byte, the interrupted cell re-runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from harness import results
from harness.run import cellrun, executors
from harness.run.experiment import load_experiment
from harness.run.sweep import run_experiment
from tests.harness.run.test_executors import (
    _wait_for,
    assert_clean,
    assert_same_rows,
    assert_same_samples,
    local_oracle,
    write_config,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("fake_samplers")]

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "slurm_local.sh"


def _sinfo_ok(env: dict[str, str]) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h"], env=env, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


@pytest.fixture(scope="module")
def slurm_cluster():
    """A working Slurm cluster for the module, started here if need be (see module docstring)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip(
            "no Slurm client here; apt-get install -y slurm-wlm munge (see docs/executors.md)"
        )
    if os.environ.get("SLURM_CONF") and _sinfo_ok(dict(os.environ)):
        yield os.environ["SLURM_CONF"]
        return
    if os.geteuid() != 0:
        pytest.skip("no Slurm at $SLURM_CONF, and scripts/slurm_local.sh needs root to start one")
    slurm_dir = os.environ.get("DLMBENCH_SLURM_DIR", "/tmp/dlmbench-slurm")
    conf = f"{slurm_dir}/slurm.conf"
    was_up = Path(conf).exists() and _sinfo_ok(dict(os.environ, SLURM_CONF=conf))
    if not was_up:
        out = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            pytest.skip(f"scripts/slurm_local.sh start failed: {(out.stderr or out.stdout)[-800:]}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", conf)
        yield conf
    if not was_up:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)


def _start_when_requeued(job: str) -> None:
    """Slurm holds a requeued job back (BeginTime, about two minutes); let it start now."""

    def pending() -> bool:
        out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%t"], capture_output=True)
        return out.stdout.decode().strip() == "PD"

    if _wait_for(pending, 60):
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)


def slurm_config(tmp_path: Path, **executor) -> Path:
    ex = {"kind": "slurm", "partition": "debug", "time_min": 10, "cpus_per_task": 1,
          "mem_gb": 1, "array_parallelism": 2, **executor}  # fmt: skip
    return write_config(
        tmp_path,
        batch_sizes=[1, 2],
        timing={"repeats": 2, "warmup": 1, "min_time_s": 1.0},
        executor=ex,
    )


def test_slurm_array_rows_equal_local_and_preemption_requeues(slurm_cluster, tmp_path):
    """Two array tasks (one per OOM group: batch 1 ok, batch 2 oom); the first task gets
    ``scancel --signal=USR2`` while its second cell runs."""
    path = slurm_config(tmp_path)
    exp, cells = load_experiment(path)
    oracle_dir, want = local_oracle(path, tmp_path)
    run_dir = tmp_path / "results" / executors.run_id_for(exp, cells)
    first, second = cells[0], cells[1]
    assert first.group_id == second.group_id
    kept: dict = {}

    def preempt() -> None:
        shard = run_dir / "cells" / f"{first.cell_id}.parquet"
        marker = cellrun.marker_path(run_dir, second.cell_id)
        if _wait_for(shard.exists, 300) and _wait_for(marker.exists, 300):
            kept["bytes"] = shard.read_bytes()
            info = cellrun.read_marker(marker) or {}
            kept["job"], kept["cell_pid"] = info.get("slurm_job_id"), info.get("pid")
            kept["scancel"] = subprocess.run(
                ["scancel", "--signal=USR2", str(kept["job"])], capture_output=True, text=True
            )
            _start_when_requeued(str(kept["job"]))

    thread = threading.Thread(target=preempt, daemon=True)
    thread.start()
    run_experiment(path, progress=False)
    thread.join(timeout=10)
    got = results.load_results(run_dir)
    assert_same_rows(got, want)
    assert_same_samples(run_dir, oracle_dir, got)
    assert (got["executor"] == "slurm").all() and got["slurm_job_id"].notna().all()
    assert kept.get("job"), "the preemption signal was not sent"
    assert kept["scancel"].returncode == 0, kept["scancel"].stderr
    assert (run_dir / "cells" / f"{first.cell_id}.parquet").read_bytes() == kept["bytes"]
    assert got.set_index("cell_id").loc[second.cell_id, "worker_pid"] != kept["cell_pid"]
    logs = "".join(p.read_text() for p in (run_dir / "slurm").rglob("*_log.*"))
    assert "Requeued" in logs or "requeue" in logs.lower(), logs[-2000:]
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    assert sorted(c for j in jobs for c in j["cells"]) == sorted(c.cell_id for c in cells)
    assert_clean(run_dir)


def test_slurm_no_wait_submits_and_status_follows(slurm_cluster, tmp_path, capsys):
    """``wait: false`` returns after sbatch; ``dlmbench status`` then sees the cells finish."""
    from harness import cli

    path = slurm_config(tmp_path, wait=False)
    exp, cells = load_experiment(path)
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    assert "submitted; follow it with: dlmbench status" in capsys.readouterr().out
    run_dir = tmp_path / "results" / executors.run_id_for(exp, cells)
    assert _wait_for(
        lambda: (
            executors.status_counts(cellrun.cell_states(run_dir, cells))["pending"]
            + executors.status_counts(cellrun.cell_states(run_dir, cells))["running"]
            == 0
        ),
        600,
    )
    assert cli.main(["status", str(run_dir)]) == 0
    assert "4 cells: done 2, skipped 0, failed 2, running 0, pending 0" in capsys.readouterr().out
    jobs = [j["job_id"] for j in json.loads((run_dir / "slurm" / "jobs.json").read_text())]
    assert _wait_for(lambda: not cellrun.squeue_states(jobs), 120)  # tasks end after their cells
