"""Executors: local-multi and Slurm (submitit) write the rows the sequential runner writes.

Oracles: the ``local`` executor's rows and samples for the same config (every column except
timings, environment and worker pids); byte-identical shards across SIGKILLs; the sequential OOM
backstop; the sbatch script submitit writes from our config. Cell processes are real (a fresh
Python per cell), on the fake sampler and a tiny DiT.
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from harness import cli, results
from harness.run import cellrun, executors
from harness.run.cellrun import CellTask
from harness.run.experiment import available_cores, load_experiment, validate
from harness.run.sweep import run_experiment

pytestmark = pytest.mark.usefixtures("fake_samplers")

MEASURED = {
    "wall_s", "wall_s_mean", "wall_s_std", "wall_s_ci_lo", "wall_s_ci_hi", "wall_s_all",
    "wall_s_cv", "wall_s_iqr", "wall_s_p90", "device_ms", "device_ms_all", "s_per_sample",
    "tokens_per_s", "samples_per_s", "ms_per_call", "warmup_last_s", "warmup_ok", "warmup_all_s",
    "tflops_effective", "mfu", "predicted_s", "predicted_ratio", "peak_alloc_gb",
    "peak_reserved_gb", "peak_rss_gb", "nvml_used_gb", "energy_j", "energy_j_total",
    "j_per_sample", "j_per_token", "power_w_mean", "energy_method", "env_id",
    "repeats", "low_repeat",  # with timing.min_time_s the repeat count follows the speed
    *cellrun.WORKER_COLUMNS,
    *results.CONTENTION_COLUMNS,  # what the machine did while the cell was timed, and the verdict
}  # fmt: skip
"""Columns that may differ between executors: timings, environment, worker identity."""


def write_config(tmp_path: Path, name: str = "exp.yaml", **changes) -> Path:
    cfg = {
        "name": "t",
        "checkpoints": {"tiny": {"path": "random:tiny", "vocab_size": 33, "init_seed": 3}},
        "samplers": [{"sampler": "fake", "params": {"num_steps": [2, 3], "oom_above_batch": 1}}],
        "seq_lens": [8],
        "batch_sizes": [1, 2, 4],
        "seeds": [0],
        "timing": {"repeats": 2, "warmup": 1},
        "output_dir": str(tmp_path / "results"),
    }
    cfg.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def one_thread():
    """The sequential oracle with one torch thread, like each cell process of two workers on two
    cores, so that floating-point reductions (hence sampled tokens) match bit for bit."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in df.columns if c not in MEASURED]
    return df[sorted(keep)].sort_values("cell_id").reset_index(drop=True)


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    a, b = comparable(got), comparable(want)
    assert list(a.columns) == list(b.columns)
    assert list(a["cell_id"]) == list(b["cell_id"])
    for col in a.columns:
        for x, y in zip(a[col], b[col]):
            same = (x == y) or (
                isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
            )
            assert same, f"column {col}: {x!r} != {y!r}"


def assert_same_samples(run_a: Path, run_b: Path, df: pd.DataFrame) -> None:
    for cid in df.loc[df["status"] == "ok", "cell_id"]:
        assert torch.equal(results.load_samples(run_a, cid), results.load_samples(run_b, cid))


def assert_clean(run_dir: Path) -> None:
    assert not list(run_dir.rglob(results.TEMP_PREFIX + "*")), "a temporary file was left"
    assert not list(run_dir.glob("cells/*" + cellrun.MARKER_SUFFIX)), "a marker was left"


def local_oracle(path: Path, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    cfg = yaml.safe_load(path.read_text())
    cfg["output_dir"] = str(tmp_path / "oracle")
    cfg.pop("executor", None)
    oracle = tmp_path / "oracle.yaml"
    oracle.write_text(yaml.safe_dump(cfg))
    run_dir = run_experiment(oracle, progress=False)
    return run_dir, results.load_results(run_dir)


# --------------------------------------------------------------------------------------------
# local-multi
# --------------------------------------------------------------------------------------------


def test_local_multi_two_cpu_workers_write_the_rows_of_local(tmp_path, one_thread):
    """Two groups × batches 1, 2, 4 with an OOM above batch 1: ok, oom, skipped in each group.

    A scheduler that started batch 4 before batch 2 of its group finished would record ``oom``
    instead of ``skipped`` there; the rows and the sampled tokens must equal ``local``'s.
    """
    path = write_config(tmp_path, executor={"kind": "local-multi", "workers": 2})
    oracle_dir, want = local_oracle(path, tmp_path)
    assert sorted(want["status"]) == ["ok", "ok", "oom", "oom", "skipped", "skipped"]
    rows = []
    run_dir = run_experiment(path, progress=False, on_row=rows.append)
    got = results.load_results(run_dir)
    assert run_dir.name == oracle_dir.name  # the executor does not enter the run id
    assert_same_rows(got, want)
    assert_same_samples(run_dir, oracle_dir, got)
    assert sorted(r["cell_id"] for r in rows) == sorted(want["cell_id"])
    assert (got["executor"] == "local-multi").all()
    measured = got[got["status"] != "skipped"]
    assert os.getpid() not in set(measured["worker_pid"])  # each cell ran in a fresh process
    assert measured["worker_pid"].nunique() == len(measured)
    if available_cores() >= 2:  # each worker bound to its own cores
        assert measured["worker_devices"].nunique() == 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["executor"]["kind"] == (
        "local-multi"
    )
    assert_clean(run_dir)
    assert (run_dir / "env.json").exists()


def test_any_executor_resumes_a_run_of_another(tmp_path, one_thread):
    """Finished cells are skipped whatever executor ran them; only missing shards are re-run,
    and ``retry_failed`` re-runs exactly the failed ones."""
    path = write_config(
        tmp_path,
        batch_sizes=[1],
        samplers=[{"sampler": "fake", "params": {"fail_at_step": [-1, 0]}}],
        seeds=[0, 1],
    )
    run_dir = run_experiment(path, progress=False)
    df = results.load_results(run_dir)
    before = {p.name: p.read_bytes() for p in results.shard_paths(run_dir)}
    victim = df.loc[df["status"] == "ok", "cell_id"].iloc[0] + ".parquet"
    (run_dir / "cells" / victim).unlink()
    rows = []
    run_experiment(path, ["executor.kind=local-multi"], progress=False, on_row=rows.append)
    assert [r["cell_id"] + ".parquet" for r in rows] == [victim]
    after = {p.name: p.read_bytes() for p in results.shard_paths(run_dir)}
    assert {k: v for k, v in after.items() if k != victim} == {
        k: v for k, v in before.items() if k != victim
    }
    assert results.read_shard(run_dir / "cells" / victim)["executor"] == "local-multi"
    rows = []
    run_experiment(
        path, ["executor.kind=local-multi"], progress=False, retry_failed=True, on_row=rows.append
    )
    failed = set(df.loc[df["status"] == "error", "cell_id"])
    assert {r["cell_id"] for r in rows} == failed and len(rows) == 2
    assert all(r["status"] == "error" and r["executor"] == "local-multi" for r in rows)


def _parent_run(cfg_path: str) -> None:
    """A forked `dlmbench run --executor local-multi` in its own process group."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    torch.set_num_threads(1)
    os._exit(cli.main(["run", cfg_path, "--executor", "local-multi", "--no-progress"]))


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _readable_shards(run_dir: Path) -> dict[str, bytes]:
    out = {}
    for p in results.shard_paths(run_dir):
        table = pq.read_table(p)  # raises on a truncated file
        assert table.num_rows == 1 and table.column("cell_id")[0].as_py() == p.stem
        out[p.name] = p.read_bytes()
    return out


def _running(run_dir: Path, cells) -> list[str]:
    if not run_dir.exists():
        return []
    return [s["cell_id"] for s in cellrun.cell_states(run_dir, cells) if s["state"] == "running"]


def _kill_group_at_random(ctx, path: Path, run_dir: Path, rng: random.Random, when: str) -> None:
    before = len(results.shard_paths(run_dir)) if run_dir.exists() else 0
    proc = ctx.Process(target=_parent_run, args=(str(path),))
    proc.start()
    try:
        os.setpgid(proc.pid, proc.pid)  # also here, so the group exists before we kill it
    except OSError:
        pass
    if when == "start":
        time.sleep(rng.uniform(0.0, 1.5))
    elif when == "running":
        _wait_for(lambda: list(run_dir.glob("cells/*" + cellrun.MARKER_SUFFIX)), 60)
        time.sleep(rng.uniform(0.0, 0.8))
    else:  # shortly after a new shard, while the other worker is mid-cell or mid-write
        _wait_for(lambda: len(results.shard_paths(run_dir)) > before, 60)
        time.sleep(rng.uniform(0.0, 0.3))
    assert proc.is_alive(), "the sweep finished before the kill; enlarge the grid"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL


def test_local_multi_killed_at_random_points_resumes_with_nothing_lost_or_duplicated(tmp_path):
    """SIGKILL the whole process group (parent and cell processes) three times, at seeded
    random points: during start-up, while cells run, and just after a shard was written.

    After each kill: every shard is readable (none half-written), every shard seen before is
    byte-identical, and no cell counts as running (its marker is stale). Then a resume runs
    exactly the missing cells, once each, and leaves no marker or temporary file.
    """
    path = write_config(
        tmp_path,
        samplers=[{"sampler": "fake", "params": {"num_steps": [1, 2, 3]}}],
        batch_sizes=[1],
        seeds=[0, 1],
        executor={"kind": "local-multi", "workers": 2},
    )
    exp, cells = load_experiment(path)
    run_dir = tmp_path / "results" / executors.run_id_for(exp, cells)
    rng = random.Random(20240607)
    ctx = multiprocessing.get_context("fork")
    seen: dict[str, bytes] = {}
    gc.collect()
    gc.freeze()
    try:
        for when in ("start", "running", "shard"):
            _kill_group_at_random(ctx, path, run_dir, rng, when)
            now = _readable_shards(run_dir) if run_dir.exists() else {}
            assert {k: now[k] for k in seen} == seen
            seen = now
            # Killed processes take a moment to end: then no cell counts as running any more.
            assert _wait_for(lambda: not _running(run_dir, cells), 30), _running(run_dir, cells)
    finally:
        gc.unfreeze()
    assert 1 <= len(seen) < len(cells), "kills should land mid-sweep"
    rows = []
    run_experiment(path, progress=False, on_row=rows.append)
    final = _readable_shards(run_dir)
    assert {k: final[k] for k in seen} == seen
    assert sorted(r["cell_id"] for r in rows) == sorted(
        c.cell_id for c in cells if c.cell_id + ".parquet" not in seen
    )
    df = results.load_results(run_dir)
    assert sorted(df["cell_id"]) == sorted(c.cell_id for c in cells)
    assert (df["status"] == "ok").all()
    assert_clean(run_dir)
    for c in cells:
        assert results.load_samples(run_dir, c.cell_id).shape == (c.batch_size, c.seq_len)


def test_a_cell_process_that_dies_gets_an_error_row_and_the_sweep_goes_on(tmp_path):
    """A cell process killed by a signal before writing its row gets an error row (never
    dropped) naming the signal."""
    path = write_config(tmp_path, batch_sizes=[1], samplers=[{"sampler": "fake"}])
    exp, cells = load_experiment(path)
    run_dir, _ = executors.prepare_shared_run(exp, cells, None)
    task = CellTask(cell=cells[0], run_dir=str(run_dir), sampler_cls=None)
    log = executors.log_path(run_dir, task.cell_id)
    proc = cellrun.launch_cell(task, cellrun.process_env(), log)
    os.kill(proc.pid, signal.SIGKILL)
    rc = proc.wait()
    row = cellrun.record_crash(task, rc, log)
    assert row["status"] == "error" and row["error"].startswith("WorkerCrash: the cell process")
    assert "SIGKILL" in row["error"]
    assert results.read_shard(run_dir / "cells" / f"{task.cell_id}.parquet")["status"] == "error"


# --------------------------------------------------------------------------------------------
# slurm through submitit's local and debug clusters
# --------------------------------------------------------------------------------------------


def _preempt_when_running(run_dir: Path, cell_id: str, out: dict) -> None:
    """Send SIGUSR2 (Slurm's preemption warning) to the submitit task running ``cell_id``."""
    marker = cellrun.marker_path(run_dir, cell_id)
    if not _wait_for(marker.exists, 120):
        return
    info = cellrun.read_marker(marker) or {}
    stat = Path(f"/proc/{info.get('pid')}/stat").read_text().rsplit(")", 1)[1].split()
    out["task_pid"], out["cell_pid"] = int(stat[1]), info["pid"]
    os.kill(out["task_pid"], signal.SIGUSR2)


def test_slurm_via_submitit_local_cluster_preempted_task_is_requeued(tmp_path, one_thread):
    """Two array tasks (one per OOM group: batch 1 ok, batch 2 oom) through submitit's local
    cluster; the first task is preempted (SIGUSR2) while its second cell runs.

    The preempted task is requeued by submitit's checkpointing: its finished cell is not re-run
    (shard bytes unchanged), the interrupted cell runs again in a new process, and the rows
    equal ``local``'s.
    """
    pytest.importorskip("submitit")
    path = write_config(
        tmp_path,
        batch_sizes=[1, 2],
        timing={"repeats": 2, "warmup": 1, "min_time_s": 0.5},
        executor={"kind": "slurm", "cluster": "local", "array_parallelism": 2, "time_min": 5},
    )
    exp, cells = load_experiment(path)
    oracle_dir, want = local_oracle(path, tmp_path)
    run_dir = tmp_path / "results" / executors.run_id_for(exp, cells)
    first, second = cells[0], cells[1]  # the first group's batch 1 and batch 2
    assert first.group_id == second.group_id and (first.batch_size, second.batch_size) == (1, 2)
    seen_first: dict[str, bytes] = {}
    hit: dict = {}

    def preempt() -> None:
        shard = run_dir / "cells" / f"{first.cell_id}.parquet"
        if _wait_for(shard.exists, 120):
            seen_first["bytes"] = shard.read_bytes()
            _preempt_when_running(run_dir, second.cell_id, hit)

    thread = threading.Thread(target=preempt, daemon=True)
    thread.start()
    run_experiment(path, progress=False)
    thread.join(timeout=5)
    got = results.load_results(run_dir)
    assert_same_rows(got, want)
    assert_same_samples(run_dir, oracle_dir, got)
    assert (got["executor"] == "slurm").all()
    assert hit, "the preemption signal was not sent"
    logs = "".join(p.read_text() for p in (run_dir / "slurm").rglob("*_log.*"))
    assert "Requeued job" in logs
    assert (run_dir / "cells" / f"{first.cell_id}.parquet").read_bytes() == seen_first["bytes"]
    second_row = got.set_index("cell_id").loc[second.cell_id]
    assert second_row["worker_pid"] != hit["cell_pid"]  # re-run by the requeued task
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    assert sorted(c for j in jobs for c in j["cells"]) == sorted(c.cell_id for c in cells)
    assert_clean(run_dir)


def test_slurm_debug_cluster_runs_the_chains_here(tmp_path):
    pytest.importorskip("submitit")
    path = write_config(
        tmp_path,
        batch_sizes=[1, 2],
        samplers=[{"sampler": "fake", "params": {"oom_above_batch": 1}}],
        executor={"kind": "slurm", "cluster": "debug"},
    )
    run_dir = run_experiment(path, progress=False)
    df = results.load_results(run_dir).sort_values("batch_size")
    assert list(df["status"]) == ["ok", "oom"] and (df["executor"] == "slurm").all()


def test_slurm_settings_reach_the_sbatch_script(tmp_path, monkeypatch):
    """The config's Slurm fields, as submitit writes them into the job script."""
    submitit = pytest.importorskip("submitit")
    # submitit's Slurm executor insists on finding `srun`; only the script text is rendered here.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    path = write_config(
        tmp_path,
        device="cuda",
        executor={
            "kind": "slurm", "partition": "gpu", "account": "proj", "qos": "high",
            "time_min": 90, "cpus_per_task": 8, "mem_gb": 64, "array_parallelism": 4,
            "setup": ["module load cuda"], "slurm_additional": {"constraint": "h100"},
        },
    )  # fmt: skip
    exp, _ = load_experiment(path)  # no GPU here: the device is checked on the nodes
    params = executors.slurm_parameters(exp, "t-abc")
    ex = submitit.AutoExecutor(folder=tmp_path / "slurm" / "%j", cluster="slurm")
    ex.update_parameters(**params)
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in (
        "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=high",
        "#SBATCH --time=90", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB",
        "#SBATCH --gpus-per-node=1", "#SBATCH --constraint=h100", "module load cuda",
        "#SBATCH --job-name=dlmbench-t-abc", "#SBATCH --signal=USR2@",
    ):  # fmt: skip
        assert line in script, (line, script)
    assert ex._executor.parameters["array_parallelism"] == 4


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_unknown_executor_is_refused_with_did_you_mean(tmp_path, capsys):
    path = write_config(tmp_path)
    assert cli.main(["run", str(path), "--executor", "local_mutli"]) == 2
    err = capsys.readouterr().err
    assert "'executor.kind' is 'local_mutli'" in err and "Did you mean: local-multi" in err
    assert (
        cli.main(["run", str(path), "--executor", "local-multi", "executor.workers=0"]) == 2
    )  # override after option
    assert "'workers' is 0; it must lie in 1 … 2147483647" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_slurm_without_submitit_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit → ImportError
    path = write_config(tmp_path)
    assert cli.main(["run", str(path), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "needs the submitit package" in err and "pip install 'dlmbench[slurm]'" in err
    with pytest.raises(ImportError, match=r"pip install 'dlmbench\[slurm\]'"):
        executors.require_submitit()


def test_worker_counts_are_checked_against_devices_all_at_once(tmp_path, monkeypatch):
    base = yaml.safe_load(write_config(tmp_path).read_text())
    cores = available_cores()
    bad = dict(base, executor={"kind": "local-multi", "workers": cores + 1, "time_min": 0})
    bad["seq_lens"] = [0]
    _, _, problems = validate(bad)
    assert any("more workers than devices" in p and f"{cores} CPU core(s)" in p for p in problems)
    assert any("'time_min' is 0" in p for p in problems)
    assert any("'seq_lens' contains 0" in p for p in problems)  # other problems too, at once
    _, _, problems = validate(dict(base, executor={"kind": "local-multi", "workers": 0}))
    assert problems == ["executor: 'workers' is 0; it must lie in 1 … 2147483647."]
    _, _, problems = validate(dict(base, executor={"kind": "local-multi", "workers": -2}))
    assert problems == ["executor: 'workers' is -2; it must lie in 1 … 2147483647."]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    gpu = dict(base, device="cuda", executor={"kind": "local-multi", "workers": 3})
    _, _, problems = validate(gpu)
    assert any("workers is 3, more workers than devices" in p and "2 GPU(s)" in p for p in problems)
    gpu["executor"] = {"kind": "local-multi", "devices": [0, 2]}
    _, _, problems = validate(gpu)
    assert any("lists GPU 2, but only 2 GPU(s)" in p for p in problems)
    _, _, problems = validate(dict(gpu, device="cuda:1", executor={"kind": "local-multi"}))
    assert any("must be 'cuda', not 'cuda:1'" in p for p in problems)


def test_device_slots_give_each_worker_its_gpu_or_its_cores(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    ex = {"kind": "local-multi", "devices": [2, 0]}
    path = write_config(tmp_path, device="cuda", executor=ex)
    exp, _ = load_experiment(path)
    slots = executors.device_slots(exp)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["7", "4"]
    assert [s.name for s in slots] == ["cuda:7", "cuda:4"] and all(s.cpus is None for s in slots)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    if available_cores() < 2:
        pytest.skip("needs 2 cores")
    cpu = write_config(tmp_path, name="cpu.yaml", executor={"kind": "local-multi", "workers": 2})
    exp, _ = load_experiment(cpu)
    slots = executors.device_slots(exp)
    threads = available_cores() // 2
    assert [s.threads for s in slots] == [threads, threads]
    assert all(s.env["OMP_NUM_THREADS"] == str(threads) for s in slots)
    assert len(set(slots[0].cpus) | set(slots[1].cpus)) == 2 * threads  # disjoint cores


def test_queue_never_starts_a_batch_before_the_smaller_batches_of_its_group(tmp_path):
    """Random finishing orders; same-batch cells (seeds) of a group may run side by side."""
    path = write_config(tmp_path, batch_sizes=[1, 2, 4], seeds=[0, 1])
    _, cells = load_experiment(path)
    tasks = executors.cell_tasks(cells, cells, tmp_path, False, "local-multi")
    rng = random.Random(0)
    for _ in range(20):
        queue, running, finished, together = executors.CellQueue(tasks), [], set(), 0
        while queue.unfinished():
            while (t := queue.take()) is not None:
                smaller = {o.cell_id for o in tasks if o.cell_id in t.after}
                assert smaller <= finished, "started before a smaller batch finished"
                running.append(t)
            together = max(together, len(running))
            done = running.pop(rng.randrange(len(running)))
            queue.finish(done)
            finished.add(done.cell_id)
        assert finished == {c.cell_id for c in cells}
        assert together >= 4  # two groups × two seeds at batch 1


# --------------------------------------------------------------------------------------------
# Markers and status
# --------------------------------------------------------------------------------------------


def test_markers_claim_release_and_stale_takeover(tmp_path):
    (tmp_path / "cells").mkdir()
    assert cellrun.claim(tmp_path, "c1", "local-multi")
    info = cellrun.read_marker(cellrun.marker_path(tmp_path, "c1"))
    assert info["pid"] == os.getpid() and info["host"] and info["started"]
    assert not cellrun.claim(tmp_path, "c1", "local-multi")  # a live process holds it
    cellrun.release(tmp_path, "c1")
    assert not cellrun.marker_path(tmp_path, "c1").exists()
    dead = dict(info, pid_start=(info["pid_start"] or 0) + 1)  # our pid, another start: reused
    cellrun.marker_path(tmp_path, "c2").write_text(json.dumps(dead))
    assert not cellrun.marker_alive(dead)
    assert cellrun.claim(tmp_path, "c2", "slurm")  # stale: taken over
    assert cellrun.read_marker(cellrun.marker_path(tmp_path, "c2"))["executor"] == "slurm"


def test_markers_from_other_hosts(monkeypatch):
    other = {"host": "node-17", "pid": 1, "slurm_job_id": "55_3"}
    assert cellrun.marker_alive(other)  # nothing here can tell: assumed alive
    assert cellrun.marker_alive(other, squeue={"55_3": "R"})
    assert not cellrun.marker_alive(other, squeue={"55_4": "R"})  # gone from the queue
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "55")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert not cellrun.marker_alive(other)  # our own job's previous attempt: requeued


def test_status_counts_done_skipped_failed_running_pending(tmp_path, capsys):
    path = write_config(
        tmp_path,
        samplers=[
            {"sampler": "fake", "params": {"oom_above_batch": 1}},
            {"name": "bad", "sampler": "fake", "params": {"fail_at_step": 0}},
        ],
        batch_sizes=[1, 2, 4],
    )
    _, cells = load_experiment(path)
    run_dir = run_experiment(path, progress=False)
    ok = [c for c in cells if c.label == "bad"]
    for c in ok[:2]:  # make two cells of 'bad' unfinished again
        (run_dir / "cells" / f"{c.cell_id}.parquet").unlink()
    live = cellrun.marker_info("local-multi")
    cellrun.marker_path(run_dir, ok[0].cell_id).write_text(json.dumps(live))
    stale = dict(live, pid_start=(live["pid_start"] or 0) + 1)
    cellrun.marker_path(run_dir, ok[1].cell_id).write_text(json.dumps(stale))
    counts = executors.status_counts(cellrun.cell_states(run_dir, cells))
    assert counts == {"done": 1, "skipped": 1, "failed": 2, "running": 1, "pending": 1}
    assert cli.main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "6 cells: done 1, skipped 1, failed 2, running 1, pending 1" in out
    assert f"running  {ok[0].cell_id}" in out and f"{os.getpid()} since" in out
    assert f"pending  {ok[1].cell_id}" in out
    assert cli.main(["status", str(run_dir), "--only", "failed"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.split()[0] == "failed" for line in out[1:])


def test_a_cell_held_by_another_live_process_is_waited_for(tmp_path):
    """A live marker of another process (a stray worker of a killed run, say) is respected: the
    cell is not run twice; when that process dies without a shard, the cell is pending again."""
    path = write_config(tmp_path, batch_sizes=[1], samplers=[{"sampler": "fake"}])
    exp, cells = load_experiment(path)
    run_dir, _ = executors.prepare_shared_run(exp, cells, None)
    cell = cells[0]
    holder = subprocess.Popen(["sleep", "60"])
    try:
        info = dict(cellrun.marker_info("local-multi"), pid=holder.pid)
        info["pid_start"] = cellrun._proc_start(holder.pid)
        cellrun.marker_path(run_dir, cell.cell_id).write_text(json.dumps(info))
        assert cellrun.run_one_cell(cell, run_dir) == "claimed"
        queue = executors.CellQueue(executors.cell_tasks(cells, cells, run_dir, False, "x"))
        task = queue.take()
        queue.away(task)
        assert queue.poll_elsewhere(run_dir) == [] and queue.unfinished()
        assert queue.take() is None
    finally:
        holder.kill()
        holder.wait()
    assert queue.poll_elsewhere(run_dir) == [] and queue.take() is task  # pending again
    queue.away(task)
    assert cellrun.run_one_cell(cell, run_dir) == "ok"  # the stale marker is taken over
    assert queue.poll_elsewhere(run_dir) == [task] and not queue.unfinished()
    assert cellrun.run_one_cell(cell, run_dir) == "done"
    assert_clean(run_dir)
