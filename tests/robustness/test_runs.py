"""What a run survives: nothing destroyed, nothing silently dropped (issue 11).

Each test's docstring names the finding it pins down:

1. a row that cannot be stored becomes the cell's ``error`` row, and the sweep goes on;
2. a corrupt or truncated shard never blocks ``show``, ``status``, ``run`` or resume: it is a
   failed cell named on stderr, then moved aside and re-measured;
3. two runs of one run folder on one machine never time cells at once and never delete each
   other's temporary files (``<run>/.lock``);
4. out of memory on the CPU counts as ``oom``; a cell whose estimated peak memory exceeds the
   available memory is ``skipped`` before its plan, and ``--dry-run`` says which cells fit;
5. the quality stage scores what it can: a missing, corrupt or never-saved samples file is that
   cell's ``skipped``/``error`` quality row.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import yaml

from harness import cli, results
from harness.model.checkpoints import save_checkpoint
from harness.model.network import DiT, DiTConfig, deterministic_init
from harness.quality.stage import score_run
from harness.run import cellrun, executors, runner
from harness.run.experiment import load_experiment, run_id_for
from harness.run.sweep import run_experiment
from samplers.base import SAMPLERS
from tests.harness import fake_sampler
from tests.harness.fake_sampler import FakeSampler
from tests.harness.quality.test_metrics import train_tokenizer
from tests.harness.run.test_runner import write_config as runner_config

SLOW_LOG_ENV = "DLMBENCH_TEST_SLOW_LOG"


class SlowSampler(FakeSampler):
    """The fake sampler, 30 ms slower per execute, logging ``pid start end`` of each execute."""

    name = "slow_fake"

    def execute(self, model, plan, *, generator):
        start = time.monotonic()
        time.sleep(0.03)
        out = super().execute(model, plan, generator=generator)
        with open(os.environ[SLOW_LOG_ENV], "a") as f:
            f.write(f"{os.getpid()} {start} {time.monotonic()}\n")
        return out


CPU_OOM = {
    "MemoryError": lambda b: MemoryError(),
    "DefaultCPUAllocator": lambda b: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you "
        f"tried to allocate {b << 30} bytes."
    ),
    "can't allocate memory": lambda b: RuntimeError(
        f"DefaultCPUAllocator: can't allocate memory: you tried to allocate {b << 30} bytes. "
        "Error code 12 (Cannot allocate memory)"
    ),
}
"""The messages of a CPU allocation failure, by name."""


class CpuOomSampler(FakeSampler):
    """Raises the CPU out-of-memory error named by :attr:`kind` above ``oom_above_batch``."""

    name = "cpu_oom_fake"
    kind = "MemoryError"

    def plan(self, model, *, batch_size, seq_len, generator):
        if batch_size > self.config.oom_above_batch:
            raise CPU_OOM[self.kind](batch_size)
        return super().plan(model, batch_size=batch_size, seq_len=seq_len, generator=generator)


EXTRA = {"slow_fake": SlowSampler, "cpu_oom_fake": CpuOomSampler}


@pytest.fixture(autouse=True)
def samplers_here():
    """The fake samplers of the runner tests and this file's, registered for each test."""
    fake_sampler.register()
    for name, cls in EXTRA.items():
        SAMPLERS.add(name, cls)
    yield
    for name in EXTRA:
        SAMPLERS.remove(name)
    fake_sampler.unregister()


def write_config(tmp_path: Path, **changes) -> Path:
    """The tiny random-model sweep of the runner tests (2 step counts × 2 batches), 2 repeats."""
    return runner_config(tmp_path, **{"timing": {"repeats": 2, "warmup": 1}, **changes})


def run_dir_of(path: Path) -> Path:
    """The run folder a config's run will use."""
    exp, cells = load_experiment(path)
    return Path(exp.output_dir) / run_id_for(exp, cells)


# --------------------------------------------------------------------------------------------
# 1. A row that cannot be stored
# --------------------------------------------------------------------------------------------


def spoil_first_cell(monkeypatch, value) -> None:
    """Make the measured row of the sweep's first cell hold ``value`` in a new column."""
    real = runner.measure_cell

    def measure(cell, ctx):
        row = real(cell, ctx)
        if cell.index == 0:
            row["unstorable"] = value
        return row

    monkeypatch.setattr(runner, "measure_cell", measure)


def test_a_row_pyarrow_cannot_store_becomes_an_error_row_and_the_sweep_goes_on(
    tmp_path, monkeypatch
):
    """Finding 1 (local): one unstorable value no longer aborts the sweep and drops the cell
    and every cell after it; the cell is recorded as ``error`` with the reason."""
    spoil_first_cell(monkeypatch, object())
    path = write_config(tmp_path)
    rows = []
    run_dir = run_experiment(path, progress=False, on_row=rows.append)
    df = results.load_results(run_dir)
    assert len(df) == len(rows) == 4
    first = df[df["cell_index"] == 0].iloc[0]
    assert first["status"] == "error"
    assert first["error"].startswith(runner.SHARD_WRITE_ERROR + ": the row of status 'ok'")
    assert "--retry-failed" in first["error"]
    assert (df[df["cell_index"] > 0]["status"] == "ok").all()


def test_a_disk_error_on_one_shard_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Finding 1 (local): a failed shard write (disk full, once) is the cell's error row."""
    real, failed = results.atomic_write, []

    def flaky(path, write):
        if path.suffix == ".parquet" and not failed:
            failed.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(results, "atomic_write", flaky)
    run_dir = run_experiment(write_config(tmp_path), progress=False)
    df = results.load_results(run_dir)
    assert len(df) == 4 and sorted(df["status"]) == ["error", "ok", "ok", "ok"]
    bad = df[df["status"] == "error"].iloc[0]
    assert bad["cell_id"] == failed[0].stem and "No space left on device" in bad["error"]


def test_the_cell_process_path_records_an_unstorable_row_too(tmp_path, monkeypatch):
    """Finding 1 (cell process, local-multi / slurm): ``run_one_cell`` records the cell as
    ``error`` (with its worker columns) instead of raising, so its marker is released and the
    parent's next cells run."""
    spoil_first_cell(monkeypatch, pa.array([1, 2]))  # an Arrow array: not a storable value
    path = write_config(tmp_path, executor={"kind": "local-multi", "workers": 1})
    exp, cells = load_experiment(path)
    run_dir, _ = executors.prepare_shared_run(exp, cells, None)
    got = [cellrun.run_one_cell(c, run_dir) for c in cells]
    assert got == ["error", "ok", "ok", "ok"]
    row = results.read_shard(run_dir / "cells" / f"{cells[0].cell_id}.parquet")
    assert row["error"].startswith(runner.SHARD_WRITE_ERROR) and row["executor"] == "local-multi"
    assert not list((run_dir / "cells").glob("*" + cellrun.MARKER_SUFFIX))


# --------------------------------------------------------------------------------------------
# 2. Corrupt or truncated shards
# --------------------------------------------------------------------------------------------


def corrupt_two_shards(run_dir: Path) -> dict[str, bytes]:
    """Overwrite one shard with random bytes and cut another in half; return their bytes."""
    shards = results.shard_paths(run_dir)
    garbage, halved = shards[0], shards[2]
    garbage.write_bytes(os.urandom(700))
    halved.write_bytes(halved.read_bytes()[: halved.stat().st_size // 2])
    return {garbage.stem: garbage.read_bytes(), halved.stem: halved.read_bytes()}


def test_corrupt_shards_are_failed_cells_for_show_and_status(tmp_path, capsys):
    """Finding 2 (readers): ``load_results`` / ``dlmbench show`` and ``cell_states`` /
    ``dlmbench status`` list a corrupt or truncated shard as a failed cell, named in a warning,
    instead of crashing; they leave the file where it is."""
    path = write_config(tmp_path)
    run_dir = run_experiment(path, progress=False)
    bad = corrupt_two_shards(run_dir)
    capsys.readouterr()
    df = results.load_results(run_dir)
    err = capsys.readouterr().err
    assert len(df) == 4 and all(f"warning: cell {cid}" in err for cid in bad)
    failed = df[df["status"] == "error"]
    assert set(failed["cell_id"]) == set(bad)
    assert failed["error"].str.startswith("CorruptShard: cells/").all()
    assert cli.main(["show", str(run_dir)]) == 0
    assert "4 cells: ok 2, error 2" in capsys.readouterr().out
    _, cells = load_experiment(path)
    states = {s["cell_id"]: s["state"] for s in cellrun.cell_states(run_dir, cells)}
    assert sorted(states.values()) == ["done", "done", "failed", "failed"]
    assert {c for c, s in states.items() if s == "failed"} == set(bad)
    assert cli.main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "failed 2" in out and "CorruptShard" in out
    assert {p.stem for p in results.shard_paths(run_dir)} >= set(bad)  # nothing moved


@pytest.mark.parametrize("kind", ["local", "local-multi"])
def test_a_rerun_moves_corrupt_shards_aside_and_remeasures_their_cells(tmp_path, capsys, kind):
    """Finding 2 (run and resume): the next run (of any executor) moves each unreadable shard to
    ``cells/<id>.parquet.corrupt`` (bytes kept, never deleted), warns, and re-measures exactly
    those cells."""
    path = write_config(tmp_path)
    run_dir = run_experiment(path, progress=False)
    bad = corrupt_two_shards(run_dir)
    rows = []
    capsys.readouterr()
    run_experiment(path, [f"executor.kind={kind}"], progress=False, on_row=rows.append)
    err = capsys.readouterr().err
    assert sorted(r["cell_id"] for r in rows) == sorted(bad)
    assert all(r["status"] == "ok" for r in rows)
    for cid, data in bad.items():
        assert (run_dir / "cells" / f"{cid}.parquet{results.CORRUPT_SUFFIX}").read_bytes() == data
        assert f"{cid}.parquet is unreadable" in err
    df = results.load_results(run_dir)
    assert len(df) == 4 and (df["status"] == "ok").all()


def test_write_shard_never_replaces_an_unreadable_shard(tmp_path, capsys):
    """Finding 2: even a direct rewrite (``--retry-failed``, a crash record) keeps the corrupt
    file, under a fresh name when ``.corrupt`` is taken."""
    (tmp_path / "cells").mkdir()
    shard = tmp_path / "cells" / "c1.parquet"
    for n in range(2):
        shard.write_bytes(b"not parquet %d" % n)
        results.write_shard(tmp_path, {"cell_id": "c1", "status": "ok"})
    assert results.read_shard(shard)["status"] == "ok"
    assert (tmp_path / "cells" / "c1.parquet.corrupt").read_bytes() == b"not parquet 0"
    assert (tmp_path / "cells" / "c1.parquet.corrupt-1").read_bytes() == b"not parquet 1"
    assert capsys.readouterr().err.count("c1.parquet is unreadable") == 2


# --------------------------------------------------------------------------------------------
# 3. Two runs of one run folder on one machine
# --------------------------------------------------------------------------------------------


def _child_run(cfg_path: str, err_path: str) -> None:
    torch.set_num_threads(1)  # no OpenMP team is created in the forked child
    with open(err_path, "w") as err:
        sys.stderr = err  # pytest's capture object is inherited; write this child's to a file
        rc = cli.main(["run", cfg_path, "--no-progress"])
    os._exit(rc)


def _intervals(log: Path) -> dict[int, list[tuple[float, float]]]:
    out: dict[int, list[tuple[float, float]]] = {}
    for line in log.read_text().splitlines():
        pid, start, end = line.split()
        out.setdefault(int(pid), []).append((float(start), float(end)))
    return out


def test_two_runs_of_one_folder_never_time_cells_at_once(tmp_path, monkeypatch):
    """Finding 3: two ``dlmbench run`` of the same run (two processes) never execute cells at
    the same time; the second one says it waits for the first (by pid) and then finds every
    cell done, so each cell is measured exactly once."""
    log = tmp_path / "executes.log"
    monkeypatch.setenv(SLOW_LOG_ENV, str(log))
    path = write_config(
        tmp_path,
        samplers=[{"sampler": "slow_fake", "params": {"num_steps": [1, 2, 3]}}],
        timing={"repeats": 1, "warmup": 0},
    )
    ctx = multiprocessing.get_context("fork")
    procs = []
    for i in range(2):
        procs.append(ctx.Process(target=_child_run, args=(str(path), str(tmp_path / f"e{i}"))))
        procs[-1].start()
        time.sleep(0.3 if i == 0 else 0)
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    spans = _intervals(log)
    assert len(spans) == 1, f"cells were timed by {len(spans)} processes: {sorted(spans)}"
    assert sum(len(v) for v in spans.values()) == 6  # 6 cells × 1 execute, none twice
    waited = (tmp_path / "e1").read_text()
    assert f"waiting for run {run_dir_of(path).name} held by pid {procs[0].pid}" in waited
    assert len(results.load_results(run_dir_of(path))) == 6


def test_a_waiting_run_deletes_no_temporary_file_of_the_holder(tmp_path, capsys):
    """Finding 3: a run started while another process (here: another thread) holds the run's
    lock waits before touching the folder, so the holder's temporary shard survives; its own
    clean-up of leftovers runs only once it holds the lock."""
    path = write_config(tmp_path, batch_sizes=[1])
    run_dir = run_dir_of(path)
    done = threading.Event()
    with results.run_lock(run_dir):
        (run_dir / "cells").mkdir(parents=True)
        temp = run_dir / "cells" / (results.TEMP_PREFIX + "x.parquet.123")
        temp.write_bytes(b"half a shard")
        worker = threading.Thread(
            target=lambda: (run_experiment(path, progress=False), done.set()), daemon=True
        )
        worker.start()
        time.sleep(1.0)
        assert temp.exists() and not done.is_set()
        assert not results.shard_paths(run_dir)
        assert results.lock_holder(run_dir) == f"pid {os.getpid()} on {os.uname().nodename}"
    worker.join(timeout=60)
    assert done.is_set() and not temp.exists()  # cleaned by the run once it held the lock
    assert len(results.load_results(run_dir)) == 2
    assert f"waiting for run {run_dir.name} held by pid {os.getpid()}" in capsys.readouterr().err


def test_the_lock_can_be_tried_without_waiting_and_re_entered(tmp_path):
    """Finding 3: ``run_lock`` re-enters in its own thread and refuses (wait=False) elsewhere."""
    failed = []

    def other():
        try:
            with results.run_lock(tmp_path, wait=False):
                pass
        except BlockingIOError:
            failed.append(True)

    with results.run_lock(tmp_path), results.run_lock(tmp_path):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert failed == [True]
    with results.run_lock(tmp_path, wait=False):  # released again
        pass


# --------------------------------------------------------------------------------------------
# 4. Out of memory on the CPU; cells that cannot fit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CPU_OOM))
def test_cpu_out_of_memory_counts_as_oom_and_skips_larger_batches(tmp_path, monkeypatch, kind):
    """Finding 4: ``MemoryError`` and the CPU allocator's RuntimeErrors are ``oom`` (not
    ``error``), so the larger batches of the group are ``skipped``, as after a CUDA OOM."""
    monkeypatch.setattr(CpuOomSampler, "kind", kind)
    path = write_config(
        tmp_path,
        samplers=[{"sampler": "cpu_oom_fake", "params": {"oom_above_batch": 1}}],
        batch_sizes=[1, 2, 4],
    )
    df = results.load_results(run_experiment(path, progress=False))
    assert df.sort_values("batch_size")["status"].tolist() == ["ok", "oom", "skipped"]
    assert "batch 4 > batch 2" in df[df["status"] == "skipped"]["error"].item()


def test_a_cell_that_cannot_fit_in_available_memory_is_skipped_before_its_plan(
    tmp_path, monkeypatch
):
    """Finding 4: with (monkeypatched) 200 kB available, batch 1 of the tiny model fits and
    batch 64 does not: it is ``skipped`` with the estimate and the available memory named,
    without its plan ever running; ``estimate`` (``--dry-run``) reports ``peak_mem_gb_est`` and
    ``fits`` for each cell."""
    monkeypatch.setattr("harness.measure.memory.available_bytes", lambda device: 200e3)
    planned = []
    real = runner.time_cell
    monkeypatch.setattr(
        runner, "time_cell", lambda c, m: (planned.append(c.batch_size), real(c, m))[1]
    )
    path = write_config(tmp_path, batch_sizes=[1, 64])
    df = results.load_results(run_experiment(path, progress=False))
    by_b = {b: g for b, g in df.groupby("batch_size")}
    assert (by_b[1]["status"] == "ok").all() and (by_b[64]["status"] == "skipped").all()
    reason = by_b[64]["error"].iloc[0]
    assert "estimated peak memory" in reason and "> 0.0002 GB available on cpu" in reason
    assert 64 not in planned and planned.count(1) == 2
    exp, cells = load_experiment(path)
    est = runner.estimate(exp, cells)
    assert [r["fits"] for r in est] == [c.batch_size == 1 for c in cells]
    assert all(0 < r["peak_mem_gb_est"] < 0.01 for r in est)
    monkeypatch.setenv(runner.MEMORY_CHECK_ENV, "0")  # the way out the message names
    rows = []
    run_experiment(path, progress=False, retry_failed=True, on_row=rows.append)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)


def test_available_memory_is_read_from_the_machine():
    """Finding 4: the host's available memory is known on Linux (``/proc/meminfo``)."""
    from harness.measure import memory

    avail = memory.available_bytes("cpu")
    assert 1e6 < avail < 1e15
    assert runner._is_oom(MemoryError()) and not runner._is_oom(ValueError("out of memory"))


# --------------------------------------------------------------------------------------------
# 5. The quality stage scores what it can
# --------------------------------------------------------------------------------------------


@pytest.fixture
def ar_checkpoint(tmp_path):
    """A tiny AR checkpoint with a BPE tokenizer beside it (as in the quality-stage tests)."""
    tok, tok_path = train_tokenizer(tmp_path)
    cfg = DiTConfig(
        family="ar", vocab_size=tok.get_vocab_size() + 1, hidden_size=32, n_blocks=2, n_heads=2,
        cond_dim=8, model_length=32, bos_index=0, eos_index=0, tokenizer=str(tok_path),
    )  # fmt: skip
    save_checkpoint(deterministic_init(DiT(cfg), seed=4).eval(), tmp_path / "ar")
    return tmp_path / "ar"


def test_quality_scores_what_it_can(tmp_path, ar_checkpoint, capsys):
    """Finding 5: a missing, corrupt or never-saved samples file becomes that cell's
    ``skipped``/``error`` quality row with the reason, and the other cells are still scored; an
    unreadable quality shard is warned about, moved aside and scored again."""
    config = {
        "name": "q",
        "checkpoints": {"ar": str(ar_checkpoint)},
        "samplers": [{"sampler": "ar"}],
        "seq_lens": [16],
        "batch_sizes": [2],
        "seeds": [0, 1, 2, 3],
        "timing": {"mode": "full", "repeats": 1, "warmup": 0},
        "output_dir": str(tmp_path / "results"),
    }
    cfg_path = tmp_path / "q.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    run_dir = run_experiment(cfg_path, progress=False)
    ids = list(results.load_results(run_dir).sort_values("seed")["cell_id"])
    (run_dir / "samples" / f"{ids[0]}.pt").unlink()
    (run_dir / "samples" / f"{ids[1]}.pt").write_bytes(b"\x80 not a torch file")
    shard = run_dir / "cells" / f"{ids[2]}.parquet"
    results.write_shard(run_dir, {**results.read_shard(shard), "samples_file": None})

    out = score_run(run_dir, f"dit:{ar_checkpoint}").set_index("cell_id")["quality_status"]
    assert out[ids[0]].startswith("skipped: the samples file samples/") and "missing" in out[ids[0]]
    assert out[ids[1]].startswith("error: the samples file") and "cannot be read" in out[ids[1]]
    assert out[ids[2]].startswith("skipped: the cell saved no samples")
    assert out[ids[3]] == "ok"
    df = results.load_results(run_dir).set_index("cell_id")
    assert df.loc[ids[3], "gen_ppl"] > 0 and df.loc[ids[0], "gen_ppl"] != df.loc[ids[0], "gen_ppl"]

    qshard = next((run_dir / "quality").glob(f"{ids[3]}__*.parquet"))
    qshard.write_bytes(b"garbage")
    capsys.readouterr()
    assert len(results.load_results(run_dir)) == 4  # joins what it can read
    assert f"quality shard quality/{qshard.name} cannot be read" in capsys.readouterr().err
    again = score_run(run_dir, f"dit:{ar_checkpoint}").set_index("cell_id")["quality_status"]
    assert again[ids[3]] == "ok"
    assert qshard.with_name(qshard.name + results.CORRUPT_SUFFIX).read_bytes() == b"garbage"
