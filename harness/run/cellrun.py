"""One cell by itself: the unit that every parallel executor runs (``harness/run/executors.py``).

:func:`run_one_cell` (cell, run_dir) runs a single cell in the calling process, exactly as the
sequential runner does (``runner.run_cell``), and writes its shard into the shared run folder.
It is a top-level function of picklable arguments, so a worker process or a Slurm task can call
it for any cell, in any order:

- a cell with a finished shard is skipped (resume works whatever executor ran the cell before);
- the OOM backstop reads the shards of the cells of the same group with a smaller batch
  (``after``): after an OOM at batch B, a larger batch is recorded as ``skipped``;
- while it runs, ``cells/<cell_id>.running`` (host, pid, start time, Slurm job) marks it as
  taken. The marker is created complete or not at all (hard link of a written temporary file)
  and removed when the shard is written. A marker whose process is gone is *stale*: the cell
  counts as pending and the next process to claim it takes it over.

A fresh process per cell (measurement.md §7.4: clean memory peaks) is started by
:func:`launch_cell`; it reads the parent's ``sys.path`` and a :class:`CellTask` from its stdin
(two pickles) and exits with :data:`EXIT_OK` or :data:`EXIT_CLAIMED`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import results
from harness.measure import costmodel, envinfo
from harness.run import runner
from harness.run.experiment import Cell, stable_hash

MARKER_SUFFIX = ".running"
EXIT_OK = 0
EXIT_CLAIMED = 3
"""Exit code of a cell process that found the cell taken by another live process."""

WORKER_COLUMNS = ("executor", "worker_host", "worker_pid", "worker_devices", "slurm_job_id")
"""Extra row columns written by the parallel executors (not by ``local``)."""


@dataclass(frozen=True)
class CellTask:
    """Everything a fresh process needs to run one cell (pickled to its stdin).

    Attributes:
        cell: the resolved cell.
        run_dir: the shared run folder.
        after: cell ids of the same OOM group with a smaller batch (their shards are read).
        retry_failed: re-run the cell when its shard records error, oom or skipped.
        executor: the executor's kind (``executor`` column).
        sampler_cls: the sampler class, registered in the new process if its registry lacks it
            (samplers registered at run time, e.g. by tests; pickled by reference).
        threads: torch threads of the cell process (None: torch's default).
        cpus: cores the cell process is bound to (None: no binding).
    """

    cell: Cell
    run_dir: str
    after: tuple[str, ...] = ()
    retry_failed: bool = False
    executor: str = "local-multi"
    sampler_cls: Any = None
    threads: int | None = None
    cpus: tuple[int, ...] | None = None

    @property
    def cell_id(self) -> str:
        """The cell's id."""
        return self.cell.cell_id


# --------------------------------------------------------------------------------------------
# Running one cell
# --------------------------------------------------------------------------------------------


def run_one_cell(
    cell: Cell,
    run_dir: str | Path,
    *,
    after: Sequence[str] = (),
    retry_failed: bool = False,
    executor: str = "local-multi",
) -> str:
    """Run ``cell`` in this process and write its shard, unless it is finished or taken.

    Args:
        cell: the resolved cell.
        run_dir: the run folder (created by the executor's parent: ``config.yaml``, ``cells/``).
        after: cell ids of the same OOM group with a smaller batch.
        retry_failed: also re-run a cell whose shard records error, oom or skipped.
        executor: recorded in the ``executor`` column.

    Returns:
        The row's ``status``; ``"done"`` when a finished shard already existed; ``"claimed"``
        when another live process holds the cell's marker.
    """
    run_dir = Path(run_dir)
    if is_finished(run_dir, cell.cell_id, retry_failed):
        return "done"
    if not claim(run_dir, cell.cell_id, executor):
        return "claimed"
    if is_finished(run_dir, cell.cell_id, retry_failed):  # finished while we were claiming it
        release(run_dir, cell.cell_id)
        return "done"
    try:
        ctx = worker_context(cell, run_dir)
        smallest = smallest_oom(run_dir, after)
        if smallest is not None:
            ctx.oom[cell.group_id] = smallest
        row = runner.run_cell(cell, ctx)
        row.update(worker_columns(executor))
        row = runner.store_row(cell, ctx, row)
    finally:
        release(run_dir, cell.cell_id)
    return row["status"]


def skip_after_oom(task: CellTask) -> dict[str, Any] | None:
    """Write and return ``task``'s ``skipped`` row if a smaller batch of its group hit OOM.

    No process is needed for such a cell. Returns None when the cell must run.
    """
    run_dir = Path(task.run_dir)
    smallest = smallest_oom(run_dir, task.after)
    if smallest is None or task.cell.batch_size <= smallest:
        return None
    if is_finished(run_dir, task.cell_id, task.retry_failed):
        return None
    ctx = runner.RunContext(run_dir, run_dir.name, None, None)
    ctx.oom[task.cell.group_id] = smallest
    row = runner.run_cell(task.cell, ctx)
    row.update(worker_columns(task.executor))
    return runner.store_row(task.cell, ctx, row)


def is_finished(run_dir: Path, cell_id: str, retry_failed: bool = False) -> bool:
    """Whether ``cell_id`` has a shard (with ``retry_failed``: a shard with status ok).

    An unreadable shard is moved aside (:func:`harness.results.move_aside`): not finished.
    """
    path = run_dir / "cells" / f"{cell_id}.parquet"
    if not path.exists():
        return False
    row = results.try_read_shard(path, ["status"])
    if isinstance(row, results.ShardProblem):
        results.move_aside(path, row)
        return False
    return not retry_failed or row["status"] == "ok"


def worker_context(cell: Cell, run_dir: Path) -> Any:
    """A :class:`runner.RunContext` for one cell process: its own fingerprint and peaks."""
    env = envinfo.fingerprint(cell.device)
    env_id = stable_hash(env, 12)
    results.record_env(run_dir, env, env_id)
    try:
        peaks = costmodel.measure_peaks(cell.device, runner.DTYPES[cell.dtype][0])
    except Exception as e:  # noqa: BLE001 -- the cost columns become NaN, the cell goes on
        print(f"warning: device peaks not measured ({type(e).__name__}: {e})", file=sys.stderr)
        peaks = None
    return runner.RunContext(run_dir, run_dir.name, env_id, peaks)


def smallest_oom(run_dir: Path, cell_ids: Iterable[str]) -> int | None:
    """The smallest batch among the given cells' shards whose status is ``oom`` (or None).

    Unreadable shards are passed over (their cells count as not yet measured).
    """
    out = None
    for cid in cell_ids:
        path = run_dir / "cells" / f"{cid}.parquet"
        if not path.exists():
            continue
        row = results.try_read_shard(path, ["status", "batch_size"])
        if isinstance(row, dict) and row["status"] == "oom":
            out = row["batch_size"] if out is None else min(out, row["batch_size"])
    return out


def worker_columns(executor: str, pid: int | None = None) -> dict[str, Any]:
    """``executor``, ``worker_host``, ``worker_pid``, ``worker_devices``, ``slurm_job_id``."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES") or None
    if devices is None and hasattr(os, "sched_getaffinity"):
        devices = "cpus " + _ranges(sorted(os.sched_getaffinity(0)))
    return {
        "executor": executor,
        "worker_host": socket.gethostname(),
        "worker_pid": os.getpid() if pid is None else pid,
        "worker_devices": devices,
        "slurm_job_id": slurm_job_id(),
    }


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``0-2,5``."""
    out: list[str] = []
    for i in ids:
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)


def slurm_job_id() -> str | None:
    """This process's Slurm job (``<array job>_<task>`` for array tasks), or None."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def record_crash(task: CellTask, returncode: int, log: Path | None) -> dict[str, Any]:
    """The row of a cell whose process died before writing one: status ``error``, written.

    A shard the process did write is kept and returned instead.
    """
    run_dir = Path(task.run_dir)
    shard = run_dir / "cells" / f"{task.cell_id}.parquet"
    if shard.exists():
        row = results.try_read_shard(shard)
        if isinstance(row, dict):
            return row
        results.move_aside(shard, row)
    how = f"code {returncode}"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            how = f"signal {signal.Signals(-returncode).name}"
    tail = _last_line(log) if log is not None else ""
    msg = (
        f"WorkerCrash: the cell process ended with {how} before writing a row"
        + (f"; last log line: {tail!r}" if tail else "")
        + (f"; full log: {log}" if log is not None else "")
        + ". A SIGKILL is often the kernel's out-of-memory killer; rerun with --retry-failed."
    )
    ctx = runner.RunContext(run_dir, run_dir.name, None, None)
    row = runner.identity_columns(task.cell, ctx, "error", msg)
    row.update(worker_columns(task.executor, pid=None))
    row = runner.store_row(task.cell, ctx, row)
    remove_stale_marker(run_dir, task.cell_id)
    return row


def _last_line(log: Path) -> str:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


# --------------------------------------------------------------------------------------------
# Markers: cells/<cell_id>.running
# --------------------------------------------------------------------------------------------


def marker_path(run_dir: str | Path, cell_id: str) -> Path:
    """``cells/<cell_id>.running``."""
    return Path(run_dir) / "cells" / f"{cell_id}{MARKER_SUFFIX}"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


def _proc_start(pid: int) -> int | None:
    """The process's start time (to tell a reused pid apart), or None where unknown."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def marker_info(executor: str) -> dict[str, Any]:
    """What a marker records about this process."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _proc_start(os.getpid()),
        "started": now.isoformat(timespec="seconds"),
        "started_unix": now.timestamp(),
        "executor": executor,
        "slurm_job_id": slurm_job_id(),
        "slurm_restart": os.environ.get("SLURM_RESTART_COUNT"),
    }


def read_marker(path: Path) -> dict[str, Any] | None:
    """A marker's content, or None if it is gone (or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def claim(run_dir: Path, cell_id: str, executor: str) -> bool:
    """Create this process's marker for ``cell_id``; False if a live process holds it.

    A stale marker (its process is gone) is replaced.
    """
    path = marker_path(run_dir, cell_id)
    text = json.dumps(marker_info(executor), indent=1) + "\n"
    if results.create_exclusive(path, text):
        return True
    other = read_marker(path)
    if other is not None and marker_alive_now(other):
        return False
    results.atomic_write(path, lambda p: p.write_text(text))
    return True


def release(run_dir: Path, cell_id: str) -> None:
    """Remove ``cell_id``'s marker if this process holds it."""
    path = marker_path(run_dir, cell_id)
    mine = read_marker(path)
    if mine is not None and mine.get("pid") == os.getpid() and mine.get("host") == _host():
        path.unlink(missing_ok=True)


def remove_stale_marker(run_dir: Path, cell_id: str) -> None:
    """Remove ``cell_id``'s marker if its process is gone."""
    path = marker_path(run_dir, cell_id)
    info = read_marker(path)
    if info is not None and not marker_alive_now(info):
        path.unlink(missing_ok=True)


def _host() -> str:
    return socket.gethostname()


def marker_alive(info: dict[str, Any], squeue: dict[str, str] | None = None) -> bool:
    """Whether the process that wrote a marker may still be running its cell.

    Same host: its pid exists, is not a zombie, and started when the marker says (a reused pid
    is not it).
    Another host: a marker of this very Slurm job is a previous attempt (requeue), so stale;
    else, when ``squeue`` states are given (job id → state), the job must be running; else
    it is assumed alive (nothing here can tell).
    """
    if info.get("host") == _host():
        pid = info.get("pid")
        if not isinstance(pid, int) or not _pid_exists(pid):
            return False
        stat = _proc_stat(pid)
        if stat is None:
            return True
        start = info.get("pid_start")
        return stat[0] != "Z" and (start is None or stat[1] == start)
    job = info.get("slurm_job_id")
    if job and job == slurm_job_id():
        return False
    if job and squeue is not None:
        return squeue.get(job) in ("R", "CG", "S")
    return True


def marker_alive_now(info: dict[str, Any]) -> bool:
    """:func:`marker_alive`, asking ``squeue`` about a marker of another host's Slurm job."""
    job = info.get("slurm_job_id")
    squeue = None
    if info.get("host") != _host() and job and job != slurm_job_id():
        squeue = squeue_states([job])
    return marker_alive(info, squeue)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def squeue_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """``<job>[_<task>]`` → compact state (``R``, ``PD``, ...) from ``squeue``; None without it."""
    mains = sorted({j.split("_")[0] for j in job_ids if j})
    if not mains or shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %t", "-j", ",".join(mains)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # every id unknown (long finished), or no answer from Slurm at all
        return {} if "Invalid job id" in out.stderr else None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


# --------------------------------------------------------------------------------------------
# Status of a run
# --------------------------------------------------------------------------------------------

STATES = ("done", "skipped", "failed", "running", "pending")


def cell_states(run_dir: str | Path, cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Each cell's state: done, skipped, failed, running or pending.

    ``done``: a shard with status ok; ``skipped``; ``failed``: error or oom, or an unreadable
    shard (named in a warning on stderr); ``running``: no shard and a live marker; ``pending``:
    no shard, and no marker or a stale one.

    Returns:
        One dict per cell in sweep order: ``cell_id, label, seq_len, batch_size, seed, state,
        status, error, trust, where`` (host:pid and Slurm job of a running cell; the reasons of
        a done cell whose timing is ``noisy``).
    """
    run_dir = Path(run_dir)
    markers = {p.name[: -len(MARKER_SUFFIX)]: read_marker(p) for p in _marker_paths(run_dir)}
    squeue = squeue_states(m.get("slurm_job_id") for m in markers.values() if m)
    out = []
    for c in cells:
        row = _status_row(run_dir / "cells" / f"{c.cell_id}.parquet")
        info = markers.get(c.cell_id)
        entry = {
            "cell_id": c.cell_id, "label": c.label, "seq_len": c.seq_len,
            "batch_size": c.batch_size, "seed": c.seed, "status": None, "error": None,
            "where": None,
        }  # fmt: skip
        if row is not None:
            entry.update(status=row["status"], error=row["error"], trust=row.get("trust"))
            if row.get("trust") == "noisy":
                entry["where"] = f"noisy timing: {row.get('trust_reason')}"
            entry["state"] = {"ok": "done", "skipped": "skipped"}.get(row["status"], "failed")
        elif info is not None and marker_alive(info, squeue):
            entry["state"] = "running"
            job = f" (Slurm job {info['slurm_job_id']})" if info.get("slurm_job_id") else ""
            since = info.get("started")
            entry["where"] = f"{info.get('host')}:{info.get('pid')} since {since}{job}"
        else:
            entry["state"] = "pending"
        out.append(entry)
    return out


def _status_row(shard: Path) -> dict[str, Any] | None:
    """A shard's row (status, error, trust); an unreadable shard is an ``error`` (warned)."""
    if not shard.exists():
        return None
    row = results.try_read_shard(shard)  # one row: status, error and the trust verdict
    if isinstance(row, results.ShardProblem):
        msg = results.corrupt_message(shard, row)
        results.warn(f"cell {shard.stem}: {msg}.")
        return {"status": "error", "error": msg}
    return row


def _marker_paths(run_dir: Path) -> list[Path]:
    cells = run_dir / "cells"
    return sorted(cells.glob("*" + MARKER_SUFFIX)) if cells.is_dir() else []


def live_markers(run_dir: Path) -> int:
    """How many markers of the run belong to live processes."""
    return sum(1 for p in _marker_paths(run_dir) if (m := read_marker(p)) and marker_alive_now(m))


# --------------------------------------------------------------------------------------------
# A fresh process per cell
# --------------------------------------------------------------------------------------------

_BOOT = "from harness.run.cellrun import cell_process_main; raise SystemExit(cell_process_main())"


def process_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment of a cell process: ``base`` (default ours) with dlmbench importable."""
    env = dict(os.environ if base is None else base)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH")) if x)
    env.update(extra)
    return env


def launch_cell(task: CellTask, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a fresh Python process running ``task``; its output is appended to ``log``.

    The process shares our process group, so stopping the group stops it too.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    paths = [str(Path(p or ".").resolve()) for p in sys.path]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, stdout=out,
            stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        proc.stdin.write(pickle.dumps(paths) + pickle.dumps(task))
        proc.stdin.close()
    except BrokenPipeError:  # it died at start-up; its exit code tells the rest
        pass
    return proc


def cell_process_main() -> int:
    """Entry point of a cell process: read ``sys.path`` and a :class:`CellTask`, run it."""
    stdin = sys.stdin.buffer
    paths = pickle.load(stdin)
    sys.path[:0] = [p for p in paths if p not in sys.path]
    task: CellTask = pickle.load(stdin)
    try:
        return run_task(task)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def run_task(task: CellTask) -> int:
    """Apply the task's threads and cores, register its sampler, run the cell; an exit code."""
    import torch

    import samplers  # noqa: F401 -- fills the registries
    from samplers.base import SAMPLERS

    if hasattr(signal, "SIGUSR2"):  # Slurm's preemption warning is for the task, which stops us
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if task.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, task.cpus)
    if task.threads:
        torch.set_num_threads(task.threads)
    if task.cell.sampler not in SAMPLERS and task.sampler_cls is not None:
        SAMPLERS.add(task.cell.sampler, task.sampler_cls)
    status = run_one_cell(
        task.cell, task.run_dir, after=task.after, retry_failed=task.retry_failed,
        executor=task.executor,
    )  # fmt: skip
    print(f"cell {task.cell_id}: {status}", flush=True)
    return EXIT_CLAIMED if status == "claimed" else EXIT_OK


__all__ = [
    "CellTask",
    "EXIT_CLAIMED",
    "EXIT_OK",
    "STATES",
    "WORKER_COLUMNS",
    "cell_process_main",
    "cell_states",
    "claim",
    "is_finished",
    "launch_cell",
    "live_markers",
    "marker_alive",
    "marker_alive_now",
    "marker_path",
    "process_env",
    "record_crash",
    "release",
    "run_one_cell",
    "skip_after_oom",
    "smallest_oom",
    "squeue_states",
]
