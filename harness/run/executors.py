"""Executors: where the cells of a sweep run (``local``, ``local-multi``, ``slurm``).

Every executor writes the same shards into the same run folder: ``local`` runs the cells in this
process through :func:`harness.run.runner.run_cell`; ``local-multi`` and ``slurm`` through
:func:`harness.run.cellrun.run_one_cell`, each cell in a fresh process (clean memory peaks), so
a run started by one executor is resumed by any other (docs/executors.md).

``local-multi``: one worker slot per device. On CUDA a slot is one GPU (``CUDA_VISIBLE_DEVICES``
set for its cell processes); on CPU a slot is a share of the cores (``threads_per_worker``
torch threads, bound to its own cores). A slot runs one cell at a time, so two timed cells never
share a device. Cells are handed out in sweep order, but a cell waits until every cell of its
OOM group with a smaller batch has finished: the OOM backstop (larger batches ``skipped`` after
an OOM) gives exactly the sequential runner's rows.

``slurm`` (submitit): one array task per OOM group (the group's pending cells in ascending batch
order, the same backstop), at most ``array_parallelism`` at once, logs under
``<run>/slurm/``. A preempted or timed-out task is requeued (submitit checkpointing): it runs
again, skipping the cells that have a shard and re-running the interrupted one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dlmcore.configio import collect, to_dict
from harness import results
from harness.run import cellrun, runner
from harness.run.cellrun import EXIT_CLAIMED, EXIT_OK, CellTask
from harness.run.experiment import (
    SLURM_INSTALL_HINT,
    Cell,
    Experiment,
    available_cores,
    expand_cells,
    normalise,
    run_id_for,
)
from samplers.base import SAMPLERS

POLL_S = 0.2
"""How often the local scheduler looks at its cell processes."""

SLURM_POLL_S = 5.0
"""How often a waiting Slurm submission looks at the shards and the queue."""

OnRow = Callable[[dict[str, Any]], None] | None


def run_local(
    exp: Experiment,
    cells: Sequence[Cell],
    *,
    run_id: str | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    on_row: OnRow = None,
) -> Path:
    """The ``local`` executor: the pending cells here, in order, in this process.

    The run's lock (:func:`harness.results.run_lock`) is held from preparing the folder to the
    last cell: a second run of the same folder on this machine waits (and says so).

    Args:
        exp: a validated experiment.
        cells: its cells (:func:`harness.run.experiment.expand_cells`).
        run_id: force the run folder name.
        progress: show a progress bar with ETA over the pending cells.
        retry_failed: also re-run cells whose shard records error, oom or skipped.
        on_row: called with each row after its shard is written.

    Returns:
        The run folder.
    """
    with results.run_lock(Path(exp.output_dir) / (run_id or run_id_for(exp, cells))):
        ctx, done = runner.prepare_run(exp, cells, run_id)
        warn_oversubscription(exp)
        pending = runner.pending_cells(cells, done, retry_failed)
        if retry_failed:
            ctx.oom.clear()
        _sweep_here(pending, ctx, progress, on_row)
    return ctx.run_dir


def _sweep_here(
    pending: Sequence[Cell], ctx: runner.RunContext, progress: bool, on_row: OnRow
) -> None:
    """Run and store each pending cell in order; a failing cell or row never ends the sweep."""
    bar = tqdm(pending, desc=ctx.run_id, unit="cell", disable=not progress, file=sys.stderr)
    # Long-lived objects (modules, the model) move to the permanent generation, so the
    # gc.collect before each cell only scans what the cells create (0.2 s → ms on a big heap).
    gc.collect()
    gc.freeze()
    try:
        for cell in bar:
            bar.set_postfix_str(f"{cell.label} L={cell.seq_len} b={cell.batch_size} s={cell.seed}")
            row = runner.store_row(cell, ctx, runner.run_cell(cell, ctx))
            if row["status"] != "ok":
                where = f"{cell.label} L={cell.seq_len} b={cell.batch_size} seed={cell.seed}"
                bar.write(f"[{row['status']}] {where}: {row['error']}", file=sys.stderr)
            if on_row is not None:
                on_row(row)
    finally:
        gc.unfreeze()


def run_parallel(
    exp: Experiment,
    cells: Sequence[Cell],
    *,
    run_id: str | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    on_row: OnRow = None,
) -> Path:
    """The ``local-multi`` and ``slurm`` executors: each pending cell in a fresh process.

    Args and return value as :func:`run_local`; ``on_row`` sees each row written by this
    session (when its cell finishes). ``local-multi`` holds the run's lock for its whole sweep
    (its slots share this machine's cores); ``slurm`` only while preparing the folder (its cells
    run elsewhere and coordinate through their markers).
    """
    local = exp.executor.kind == "local-multi"
    lock_dir = Path(exp.output_dir) / (run_id or run_id_for(exp, cells))
    with results.run_lock(lock_dir) if local else contextlib.nullcontext():
        run_dir, done = prepare_shared_run(exp, cells, run_id)
        pending = runner.pending_cells(cells, done, retry_failed)
        tasks = cell_tasks(cells, pending, run_dir, retry_failed, exp.executor.kind)
        if local:
            run_local_multi(tasks, device_slots(exp), run_dir, progress=progress, on_row=on_row)
    if not local:
        run_slurm(exp, tasks, run_dir, progress=progress, on_row=on_row)
    return run_dir


def prepare_shared_run(
    exp: Experiment, cells: Sequence[Cell], run_id: str | None
) -> tuple[Path, dict[str, dict]]:
    """Create (or reopen) the run folder without touching the device; return it, finished cells.

    Each cell process records its own environment fingerprint.

    Temporary files are removed only when no live cell process could be writing them; stale
    markers are removed.
    """
    run_id = run_id or run_id_for(exp, cells)
    run_dir = Path(exp.output_dir) / run_id
    busy = cellrun.live_markers(run_dir)
    config = {"run_id": run_id, **to_dict(exp)}
    results.init_run_dir(run_dir, config, clean_min_age_s=3600.0 if busy else 0.0)
    for p in (run_dir / "cells").glob("*" + cellrun.MARKER_SUFFIX):
        cellrun.remove_stale_marker(run_dir, p.name[: -len(cellrun.MARKER_SUFFIX)])
    return run_dir, results.finished(run_dir)


def cell_tasks(
    cells: Sequence[Cell], pending: Sequence[Cell], run_dir: Path, retry_failed: bool, kind: str
) -> list[CellTask]:
    """One :class:`CellTask` per pending cell, naming the smaller batches of its OOM group."""
    groups: dict[str, list[Cell]] = collections.defaultdict(list)
    for c in cells:
        groups[c.group_id].append(c)
    return [
        CellTask(
            cell=c,
            run_dir=str(run_dir),
            after=tuple(o.cell_id for o in groups[c.group_id] if o.batch_size < c.batch_size),
            retry_failed=retry_failed,
            executor=kind,
            sampler_cls=SAMPLERS.get(c.sampler),
        )
        for c in pending
    ]


def log_path(run_dir: str | Path, cell_id: str) -> Path:
    """Where a cell process's output goes: ``<run>/logs/<cell_id>.log`` (appended)."""
    return Path(run_dir) / "logs" / f"{cell_id}.log"


def _report(row: dict[str, Any], bar: tqdm, on_row: OnRow) -> None:
    if row.get("status") != "ok":
        where = f"{row.get('label')} L={row.get('seq_len')} b={row.get('batch_size')}"
        bar.write(f"[{row.get('status')}] {where} seed={row.get('seed')}: {row.get('error')}")
    if on_row is not None:
        on_row(row)


# --------------------------------------------------------------------------------------------
# local-multi
# --------------------------------------------------------------------------------------------


@dataclass
class Slot:
    """One device's worker: runs one cell process at a time.

    Attributes:
        name: ``cuda:<physical id>`` or ``cpu[<cores>]``.
        env: environment of its cell processes (``CUDA_VISIBLE_DEVICES``, thread counts).
        threads: torch threads of its cell processes.
        cpus: cores its cell processes are bound to (None: no binding).
        proc: the running cell process.
        task: the task it runs.
    """

    name: str
    env: dict[str, str]
    threads: int
    cpus: tuple[int, ...] | None
    proc: subprocess.Popen | None = None
    task: CellTask | None = None


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        return [x.strip() for x in env.split(",") if x.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]


def device_slots(exp: Experiment) -> list[Slot]:
    """The worker slots of a ``local-multi`` run: one per GPU, or ``workers`` shares of the CPU.

    Each slot gets ``threads_per_worker`` (default cores // workers) torch threads; on CPU (or
    with ``pin_cpus: true``) each is bound to its own cores when they suffice.
    """
    ex, device = exp.executor, exp.device
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    n_cores = len(cores) or available_cores()
    if device.startswith("cuda"):
        visible = _visible_gpus()
        ids = list(ex.devices) if ex.devices is not None else list(range(len(visible)))
        ids = ids[: ex.workers or len(ids)]
        gpus = [visible[i] for i in ids]
        pin = ex.pin_cpus is True
    else:
        gpus = [None] * (ex.workers or 1)
        pin = ex.pin_cpus is not False
    threads = ex.threads_per_worker or max(1, n_cores // len(gpus))
    fits = pin and cores and threads * len(gpus) <= len(cores)
    slots = []
    for i, gpu in enumerate(gpus):
        cpus = tuple(cores[i * threads : (i + 1) * threads]) if fits else None
        extra = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if gpu is not None:
            extra["CUDA_VISIBLE_DEVICES"] = gpu
        name = f"cuda:{gpu}" if gpu is not None else f"cpu[{cellrun._ranges(list(cpus or ()))}]"
        slots.append(Slot(name, cellrun.process_env(**extra), threads, cpus))
    return slots


class CellQueue:
    """Pending cells in sweep order, each handed out after its group's smaller batches.

    A cell starts only after every cell of its OOM group with a smaller batch has finished (the
    sequential runner's order within a group), so the OOM backstop sees what it would see there.
    """

    def __init__(self, tasks: Sequence[CellTask]) -> None:
        self.pending: list[CellTask] = list(tasks)
        self.busy: dict[str, CellTask] = {}
        self.elsewhere: dict[str, CellTask] = {}
        self.open_batches: dict[str, list[int]] = collections.defaultdict(list)
        for t in tasks:
            self.open_batches[t.cell.group_id].append(t.cell.batch_size)

    def unfinished(self) -> bool:
        """Whether any cell is pending or running."""
        return bool(self.pending or self.busy)

    def take(self) -> CellTask | None:
        """The first pending cell whose smaller batches have all finished (None if none)."""
        for i, t in enumerate(self.pending):
            if min(self.open_batches[t.cell.group_id]) >= t.cell.batch_size:
                del self.pending[i]
                self.busy[t.cell_id] = t
                return t
        return None

    def finish(self, task: CellTask) -> None:
        """Mark ``task`` finished (its shard exists)."""
        self.busy.pop(task.cell_id, None)
        self.elsewhere.pop(task.cell_id, None)
        self.open_batches[task.cell.group_id].remove(task.cell.batch_size)
        if not self.open_batches[task.cell.group_id]:
            self.open_batches[task.cell.group_id].append(sys.maxsize)

    def away(self, task: CellTask) -> None:
        """``task`` is run by another live process: wait for its shard (or its end)."""
        self.elsewhere[task.cell_id] = task

    def poll_elsewhere(self, run_dir: Path) -> list[CellTask]:
        """Finish the cells run elsewhere that now have a shard; requeue those given up."""
        done = []
        for t in list(self.elsewhere.values()):
            if (run_dir / "cells" / f"{t.cell_id}.parquet").exists():
                self.finish(t)
                done.append(t)
                continue
            marker = cellrun.read_marker(cellrun.marker_path(run_dir, t.cell_id))
            if marker is None or not cellrun.marker_alive_now(marker):
                del self.elsewhere[t.cell_id], self.busy[t.cell_id]
                self.pending.append(t)
                self.pending.sort(key=lambda x: x.cell.index)
        return done


def run_local_multi(
    tasks: Sequence[CellTask],
    slots: Sequence[Slot],
    run_dir: Path,
    *,
    progress: bool = True,
    on_row: OnRow = None,
) -> None:
    """Run ``tasks`` on ``slots``, one fresh cell process per slot at a time, until all finish.

    A cell process that dies without writing its row gets an ``error`` row (``WorkerCrash``);
    a cell that another live process is running is waited for. On an exception (Ctrl-C, or
    SIGTERM) the running cell processes are stopped; their cells stay pending.
    """
    queue = CellQueue(tasks)
    bar = tqdm(total=len(tasks), desc=run_dir.name, unit="cell", disable=not progress)
    try:
        with _sigterm_as_interrupt():
            while queue.unfinished():
                _fill(slots, queue, run_dir, bar, on_row)
                for slot in _reap(slots):
                    _settle(slot, queue, run_dir, bar, on_row)
                finished_elsewhere = queue.poll_elsewhere(run_dir)
                if finished_elsewhere:
                    bar.update(len(finished_elsewhere))
    finally:
        _stop(slots)
        bar.close()


def _fill(slots: Sequence[Slot], queue: CellQueue, run_dir: Path, bar: tqdm, on_row: OnRow) -> None:
    """Start a cell process on each idle slot; write the rows of cells skipped after an OOM."""
    for slot in slots:
        if slot.proc is not None:
            continue
        task = queue.take()
        while task is not None and (row := cellrun.skip_after_oom(task)) is not None:
            queue.finish(task)
            _report(row, bar, on_row)
            bar.update()
            task = queue.take()
        if task is None:
            return
        slot.task = dataclasses.replace(task, threads=slot.threads, cpus=slot.cpus)
        slot.proc = cellrun.launch_cell(slot.task, slot.env, log_path(run_dir, task.cell_id))


def _reap(slots: Sequence[Slot]) -> list[Slot]:
    """Slots whose cell process has exited, waiting up to :data:`POLL_S` for one."""
    deadline = time.monotonic() + POLL_S
    while True:
        ended = [s for s in slots if s.proc is not None and s.proc.poll() is not None]
        if ended or time.monotonic() >= deadline:
            return ended
        time.sleep(0.02)


def _settle(slot: Slot, queue: CellQueue, run_dir: Path, bar: tqdm, on_row: OnRow) -> None:
    """Book the outcome of a slot's finished cell process and free the slot."""
    task, rc = slot.task, slot.proc.returncode
    slot.task, slot.proc = None, None
    if rc == EXIT_CLAIMED:
        queue.away(task)
        return
    shard = run_dir / "cells" / f"{task.cell_id}.parquet"
    row = results.try_read_shard(shard) if rc == EXIT_OK and shard.exists() else None
    if not isinstance(row, dict):  # no shard, or an unreadable one (moved aside there)
        row = cellrun.record_crash(task, rc, log_path(run_dir, task.cell_id))
    queue.finish(task)
    bar.update()
    _report(row, bar, on_row)


def _stop(slots: Sequence[Slot]) -> None:
    """Stop the running cell processes (SIGTERM, then SIGKILL after 10 s)."""
    running = [s.proc for s in slots if s.proc is not None and s.proc.poll() is None]
    for p in running:
        p.terminate()
    for p in running:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (main thread only), so cell processes get stopped."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# --------------------------------------------------------------------------------------------
# slurm (submitit)
# --------------------------------------------------------------------------------------------

_RUNNING: list[subprocess.Popen] = []
"""The cell process of the chain running in this (Slurm task) process, for checkpoint()."""

_INTERRUPTED = {
    -signal.SIGTERM, -signal.SIGINT, -signal.SIGUSR2, 128 + signal.SIGINT, 128 + signal.SIGTERM,
}  # fmt: skip


@dataclass(frozen=True)
class ChainTask:
    """One Slurm array task: one OOM group's pending cells, ascending batch, each in a new process.

    Requeued after a preemption or a time-out (submitit calls :meth:`checkpoint`), it runs again
    from the start: cells with a shard are skipped, the interrupted one is re-run.

    Attributes:
        tasks: the cells, in sweep order.
    """

    tasks: tuple[CellTask, ...]

    def __call__(self) -> dict[str, int]:
        """Run every cell; return cell_id → the cell process's exit code."""
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
        out = {}
        for task in self.tasks:
            task = dataclasses.replace(task, threads=task.threads or threads)
            out[task.cell_id] = _run_chain_cell(task)
        return out

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Stop the running cell process and resubmit this chain unchanged (submitit hook)."""
        from submitit.helpers import DelayedSubmission

        for proc in list(_RUNNING):
            # No wait(): this runs in a signal handler, maybe inside that process's wait().
            proc.kill()
        return DelayedSubmission(self, *args, **kwargs)


def _run_chain_cell(task: CellTask) -> int:
    run_dir = Path(task.run_dir)
    if cellrun.is_finished(run_dir, task.cell_id, task.retry_failed):
        return EXIT_OK  # e.g. run before this task was requeued
    if cellrun.skip_after_oom(task) is not None:
        return EXIT_OK
    log = log_path(task.run_dir, task.cell_id)
    proc = cellrun.launch_cell(task, cellrun.process_env(), log)
    _RUNNING.append(proc)
    try:
        rc = proc.wait()
    finally:
        _RUNNING.remove(proc)
    if rc in _INTERRUPTED:  # the task itself is being stopped: the cell stays pending
        raise SystemExit(f"cell {task.cell_id} interrupted ({rc}); it stays pending")
    if rc not in (EXIT_OK, EXIT_CLAIMED):
        cellrun.record_crash(task, rc, log)
    return rc


def require_submitit() -> Any:
    """Import submitit, or raise an ImportError saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise ImportError(
            "executor 'slurm' needs the submitit package, which is not installed. Install it "
            f"with: {SLURM_INSTALL_HINT} (or run with --executor local-multi)."
        ) from None
    return submitit


def group_chains(tasks: Sequence[CellTask]) -> list[ChainTask]:
    """One :class:`ChainTask` per OOM group, in sweep order of its first cell."""
    groups: dict[str, list[CellTask]] = {}
    for t in tasks:
        groups.setdefault(t.cell.group_id, []).append(t)
    return [ChainTask(tuple(g)) for g in groups.values()]


def slurm_parameters(exp: Experiment, run_name: str) -> dict[str, Any]:
    """submitit ``update_parameters`` arguments from ``exp.executor``."""
    ex = exp.executor
    # Tasks run `python -m submitit.core._submit`, which unpickles our callables: make this
    # checkout importable there too (harmless when dlmbench is installed).
    root = str(Path(__file__).resolve().parents[2])
    setup = [f"export PYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}}", *ex.setup]
    gpus = ex.gpus_per_task
    if gpus is None:
        gpus = 1 if exp.device.startswith("cuda") else 0
    params: dict[str, Any] = {
        "name": f"dlmbench-{run_name}",
        "timeout_min": ex.time_min,
        "gpus_per_node": gpus,
        "tasks_per_node": 1,
        "nodes": 1,
        "cpus_per_task": ex.cpus_per_task,
        "mem_gb": ex.mem_gb,
    }
    if ex.cluster == "slurm":
        params.update(
            slurm_partition=ex.partition,
            slurm_account=ex.account,
            slurm_qos=ex.qos,
            slurm_array_parallelism=ex.array_parallelism,
            slurm_additional_parameters=dict(ex.slurm_additional) or None,
            slurm_setup=setup,
        )
    elif ex.cluster == "local":
        params["local_setup"] = setup
    return {k: v for k, v in params.items() if v is not None}


def run_slurm(
    exp: Experiment,
    tasks: Sequence[CellTask],
    run_dir: Path,
    *,
    progress: bool = True,
    on_row: OnRow = None,
) -> None:
    """Submit one array task per OOM group through submitit; wait unless ``wait: false``.

    The ``local`` cluster has no array limit of its own, so its tasks go in waves of
    ``array_parallelism``; the ``debug`` cluster runs them one by one in this process.
    """
    submitit = require_submitit()
    ex = exp.executor
    chains = group_chains(tasks)
    if not chains:
        return
    executor = submitit.AutoExecutor(
        folder=run_dir / "slurm" / "%j", cluster=ex.cluster, slurm_max_num_timeout=ex.max_requeues
    )
    executor.update_parameters(**slurm_parameters(exp, run_dir.name))
    size = ex.array_parallelism if ex.cluster == "local" else len(chains)
    for start in range(0, len(chains), size):
        wave = chains[start : start + size]
        jobs = executor.submit_array(wave)
        record_jobs(run_dir, jobs, wave)
        n_cells = sum(len(c.tasks) for c in wave)
        print(
            f"submitted {len(wave)} {ex.cluster} array task(s) for {n_cells} cell(s): job "
            f"{jobs[0].job_id.split('_')[0]}; logs under {run_dir / 'slurm'}",
            file=sys.stderr,
        )
        if ex.wait or ex.cluster != "slurm":
            wait_jobs(jobs, wave, run_dir, ex.cluster, progress=progress, on_row=on_row)
    with contextlib.suppress(OSError):  # an empty folder named '%j' made by the local cluster
        (run_dir / "slurm" / "%j").rmdir()


def record_jobs(run_dir: Path, jobs: Sequence[Any], chains: Sequence[ChainTask]) -> None:
    """Append the submitted jobs and their cells to ``<run>/slurm/jobs.json`` (atomically)."""
    path = run_dir / "slurm" / "jobs.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    entries += [
        {"job_id": j.job_id, "submitted": now, "cells": [t.cell_id for t in c.tasks]}
        for j, c in zip(jobs, chains)
    ]
    text = json.dumps(entries, indent=1) + "\n"
    results.atomic_write(path, lambda p: p.write_text(text))


def wait_jobs(
    jobs: Sequence[Any],
    chains: Sequence[ChainTask],
    run_dir: Path,
    cluster: str,
    *,
    progress: bool = True,
    on_row: OnRow = None,
) -> None:
    """Wait for ``jobs``, reporting each cell's row as its shard appears; print failed tasks."""
    ids = [t.cell_id for c in chains for t in c.tasks]
    seen: set[str] = set()
    bar = tqdm(total=len(ids), desc=run_dir.name, unit="cell", disable=not progress)
    failures = []
    try:
        while True:
            if cluster == "debug":
                failures = [f for j in jobs if (f := _run_debug(j))]
            over = cluster == "debug" or _jobs_over(jobs, cluster)
            for cid in ids:
                shard = run_dir / "cells" / f"{cid}.parquet"
                if cid not in seen and shard.exists():
                    seen.add(cid)
                    bar.update()
                    _report(_shard_row(shard), bar, on_row)
            if over:
                break
            time.sleep(SLURM_POLL_S if cluster == "slurm" else POLL_S)
    finally:
        bar.close()
    for job, err in failures or [(j, _job_error(j)) for j in jobs]:
        if err is not None:
            print(f"array task {job.job_id} failed: {err}; see {job.paths.stderr}", file=sys.stderr)


def _shard_row(shard: Path) -> dict[str, Any]:
    """A shard's row; an unreadable one as an ``error`` row naming it (left in place)."""
    row = results.try_read_shard(shard)
    if isinstance(row, results.ShardProblem):
        return {
            "cell_id": shard.stem,
            "status": "error",
            "error": results.corrupt_message(shard, row),
        }
    return row


def _run_debug(job: Any) -> tuple[Any, BaseException] | None:
    """Run a debug-cluster job here (without submitit's post-mortem debugger)."""
    try:
        job.submission().result()
    except Exception as e:  # noqa: BLE001 -- reported with the other failed tasks
        return job, e
    return None


def _jobs_over(jobs: Sequence[Any], cluster: str) -> bool:
    """Whether every job has ended (its result file, submitit's watcher, or gone from squeue)."""
    if all(j.done() for j in jobs):
        return True
    if cluster != "slurm":
        return False
    states = cellrun.squeue_states(j.job_id for j in jobs)
    return states is not None and not any(j.job_id in states for j in jobs)


def _job_error(job: Any) -> BaseException | None:
    try:
        return job.exception()
    except Exception as e:  # noqa: BLE001 -- e.g. no result file: the task was killed
        return e


# --------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------


def cells_of_run(run_dir: str | Path) -> tuple[list[Cell], list[str]]:
    """The cells of a run, re-expanded from its ``config.yaml``; and any problem doing so.

    The device is not required to exist here (status is often read on a login node).
    """
    from dlmcore.configio import ConfigError
    from dlmcore.yamlio import load_yaml_file

    try:
        raw = load_yaml_file(Path(run_dir) / "config.yaml") or {}
    except ConfigError as e:
        return [], e.problems
    raw.pop("run_id", None)
    exp, problems = collect(Experiment, normalise(raw))
    if exp is None:
        return [], problems
    cells, more = expand_cells(exp)
    return cells, problems + more


def status_counts(states: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Counts per state, in :data:`harness.run.cellrun.STATES` order."""
    counter = collections.Counter(s["state"] for s in states)
    return {k: counter.get(k, 0) for k in cellrun.STATES}


START_PROBE_S = 0.25
"""How long a CPU sweep looks at its cores before starting (the oversubscription warning)."""


def warn_oversubscription(exp: Experiment, probe: Callable[[], float] | None = None) -> None:
    """Say loudly, at the start of a CPU sweep, when torch's threads exceed the idle cores."""
    if not exp.device.startswith("cpu"):
        return
    import torch

    from harness.measure import contention

    others = (probe or (lambda: contention.probe_others_cores(START_PROBE_S)))()
    msg = contention.oversubscription_warning(torch.get_num_threads(), others)
    if msg:
        results.warn(msg)
