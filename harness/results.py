"""The results store: one folder per run, one parquet shard per finished cell.

Layout (``docs/design.md``, Results)::

    results/<run_id>/
        config.yaml              the resolved experiment config
        env.json                 environment fingerprint of the first session
        env-<env_id>.json        fingerprint of any later session that differed
        cells/<cell_id>.parquet  one row per finished cell (ok, error, oom or skipped)
        samples/<cell_id>.pt     token ids (b, L) of the first timed repeat (full mode)

Every file is written atomically: to a temporary name in the same folder, flushed and fsynced,
then renamed. A run killed at any point leaves only complete shards (and maybe a temporary file,
removed by the next run), so resuming re-runs exactly the cells without a shard.

Nothing is destroyed, nothing silently dropped: a shard that cannot be read (a disk error, a
copy cut short) is reported on stderr and counts as a failed cell; the next run moves it aside
to ``cells/<cell_id>.parquet.corrupt`` and re-measures the cell. A local run holds
``<run>/.lock`` (:func:`run_lock`) for its whole sweep, so a second run of the same run folder on
the machine waits instead of timing cells on the same cores or deleting the first one's
temporary files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

if TYPE_CHECKING:
    import pandas as pd

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = ".tmp-"
CORRUPT_SUFFIX = ".corrupt"
"""Appended to the name of an unreadable shard when it is moved aside."""
LOCK_NAME = ".lock"
"""The run folder's lock file (:func:`run_lock`)."""

IDENTITY_COLUMNS = [
    "run_id", "cell_id", "status", "error", "sampler", "label", "checkpoint", "family",
    "model_size", "batch_size", "seq_len", "seed", "device", "dtype", "timing_mode",
]  # fmt: skip
TIMING_COLUMNS = [
    "wall_s", "wall_s_mean", "wall_s_std", "wall_s_ci_lo", "wall_s_ci_hi", "wall_s_all",
    "device_ms", "s_per_sample", "tokens_per_s", "samples_per_s", "ms_per_call", "repeats",
    "warmup", "warmup_last_s", "warmup_ok",
]  # fmt: skip
WORK_COLUMNS = [
    "nfe_denoise", "nfe_total", "nfe_expected", "nfe_profile_sim", "token_forwards",
    "tokens_per_forward", "attn_pairs", "flops_analytic", "bytes_analytic", "tflops_effective",
    "mfu", "predicted_s", "predicted_ratio", "context_rows",
]  # fmt: skip
MEMORY_ENERGY_COLUMNS = [
    "peak_alloc_gb", "peak_reserved_gb", "peak_rss_gb", "nvml_used_gb", "cache_bytes_analytic",
    "energy_j", "j_per_sample", "j_per_token", "energy_method",
]  # fmt: skip
CONTENTION_COLUMNS = [
    "load_1m_before", "load_1m_after", "others_cpu_s", "others_cores", "cpu_mhz_min",
    "cpu_mhz_max", "cpu_governor", "gpu_sm_mhz", "gpu_other_processes", "gpu_throttle",
    "trust", "trust_reason",
]  # fmt: skip
DESIGN_COLUMNS = (
    IDENTITY_COLUMNS + TIMING_COLUMNS + WORK_COLUMNS + MEMORY_ENERGY_COLUMNS + CONTENTION_COLUMNS
)
"""Every column ``docs/design.md`` names for the runner (quality columns come later)."""

LIST_COLUMNS = ("wall_s_all", "device_ms_all", "warmup_all_s")


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def markdown_table(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A Markdown table of ``df`` (``columns``: which, in order; default all).

    Floats to 3 significant figures, NaN as "–", None as an empty cell.
    """
    import numpy as np

    cols = list(df.columns) if columns is None else columns

    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "–" if math.isnan(v) else f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` via ``write(temp)`` on a temporary sibling, fsync, then rename.

    Raises:
        Whatever ``write`` raises; the temporary file is removed first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def clean_temp(run_dir: Path, min_age_s: float = 0.0) -> int:
    """Remove temporary files left by a killed run; return how many.

    Args:
        run_dir: the run folder.
        min_age_s: keep files modified less than this long ago (another process may be writing
            them: a worker of a parallel executor).
    """
    n = 0
    now = time.time()
    for sub in (run_dir, run_dir / "cells", run_dir / "samples"):
        for p in sub.glob(TEMP_PREFIX + "*") if sub.is_dir() else ():
            try:
                if min_age_s and now - p.stat().st_mtime < min_age_s:
                    continue
            except FileNotFoundError:
                continue
            p.unlink(missing_ok=True)
            n += 1
    return n


# --------------------------------------------------------------------------------------------
# The run lock: one sweep of a run folder per machine at a time
# --------------------------------------------------------------------------------------------

_held_locks: dict[tuple[str, int], int] = {}
"""(run folder, thread) → how deep this thread holds its lock (:func:`run_lock` re-enters)."""


def lock_holder(run_dir: str | Path) -> str:
    """Who holds (or last held) the run's lock: ``pid N on HOST`` from ``.lock``, or ``?``."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text().split()
    except OSError:
        return "?"
    return f"pid {text[0]} on {text[1]}" if len(text) >= 2 else "?"


@contextlib.contextmanager
def run_lock(run_dir: str | Path, *, wait: bool = True) -> Iterator[None]:
    """Hold the exclusive advisory lock ``<run>/.lock`` (``flock``) for the ``with`` body.

    When another process (or thread) holds it, print ``waiting for run X held by pid N`` on
    stderr and wait until it is released. The kernel releases the lock when its holder exits
    (a SIGKILL included), so a lock is never stale. Re-entrant within one thread. A no-op where
    ``fcntl`` is missing.

    Raises:
        BlockingIOError: ``wait`` is False and the lock is held elsewhere.
    """
    run_dir = Path(run_dir)
    key = (str(run_dir.resolve()), threading.get_ident())
    if fcntl is None or key in _held_locks:
        _held_locks[key] = _held_locks.get(key, 0) + 1
        try:
            yield
        finally:
            _release_depth(key)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, run_dir, wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        _held_locks[key] = 1
        try:
            yield
        finally:
            _held_locks.pop(key, None)
    finally:
        os.close(fd)  # releases the lock


def _release_depth(key: tuple[str, int]) -> None:
    _held_locks[key] -= 1
    if not _held_locks[key]:
        del _held_locks[key]


def _acquire(fd: int, run_dir: Path, wait: bool) -> None:
    """``flock`` ``fd`` exclusively; say who holds it before waiting."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        if not wait:
            raise
    print(
        f"waiting for run {run_dir.name} held by {lock_holder(run_dir)} (another dlmbench run "
        "of the same run folder); it goes on when that one ends.",
        file=sys.stderr,
        flush=True,
    )
    fcntl.flock(fd, fcntl.LOCK_EX)


def init_run_dir(
    run_dir: Path,
    config: dict[str, Any],
    env: dict[str, Any] | None = None,
    env_id: str | None = None,
    *,
    clean_min_age_s: float = 0.0,
) -> None:
    """Create the run folder with ``config.yaml`` and (if given) the environment fingerprint.

    A resumed run keeps the first ``env.json``; a differing later fingerprint is stored as
    ``env-<env_id>.json`` (every row names its ``env_id``). Parallel executors pass no ``env``:
    each cell process records its own (:func:`record_env`). Temporary files are removed under
    the run's lock (:func:`run_lock`; waited for when another process holds it).
    """
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    with run_lock(run_dir):  # never while another run of this folder may be writing them
        clean_temp(run_dir, clean_min_age_s)
    text = yaml.safe_dump(config, sort_keys=False)
    atomic_write(run_dir / "config.yaml", lambda p: p.write_text(text))
    if env is not None and env_id is not None:
        record_env(run_dir, env, env_id)


def record_env(run_dir: Path, env: dict[str, Any], env_id: str) -> None:
    """Store a fingerprint: as ``env.json``, or as ``env-<env_id>.json`` when that one differs.

    Safe when several processes call it at once (the first ``env.json`` is created by a hard link,
    which fails rather than replaces).
    """
    doc = json.dumps({"env_id": env_id, **env}, indent=2, default=str) + "\n"
    first = run_dir / "env.json"
    if not first.exists() and create_exclusive(first, doc):
        return
    if json.loads(first.read_text()).get("env_id") != env_id:
        other = run_dir / f"env-{env_id}.json"
        if not other.exists():
            atomic_write(other, lambda p: p.write_text(doc))


def create_exclusive(path: Path, text: str) -> bool:
    """Write ``path`` complete or not at all, only if it does not exist; return whether it did."""
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX + path.name + ".", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: exclusive create, then write
            try:
                with open(path, "x") as f:
                    f.write(text)
            except FileExistsError:
                return False
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _arrow_value(v: Any) -> Any:
    """Scalars stay; lists of numbers stay lists; anything else becomes JSON text."""
    if isinstance(v, list | tuple):
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            return [float(x) for x in v]
        return json.dumps(v, default=str)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return v


def write_shard(run_dir: Path, row: dict[str, Any]) -> Path:
    """Write one cell's row to ``cells/<cell_id>.parquet`` atomically.

    An unreadable shard already there is moved aside first (:func:`move_aside`), never replaced.

    Raises:
        pyarrow.ArrowException, TypeError, ValueError: a value pyarrow cannot store.
        OSError: the file system refused the write.
    """
    table = pa.Table.from_pylist([{k: _arrow_value(v) for k, v in row.items()}])
    path = run_dir / "cells" / f"{row['cell_id']}.parquet"
    if path.exists() and isinstance(try_read_shard(path, ["cell_id"]), ShardProblem):
        move_aside(path, "it is about to be rewritten")
    return atomic_write(path, lambda p: pq.write_table(table, p))


def save_samples(run_dir: Path, cell_id: str, tokens: torch.Tensor) -> str:
    """Save token ids ``(b, L)`` as ``samples/<cell_id>.pt`` (int tensor); return the rel. path."""
    rel = f"samples/{cell_id}.pt"
    data = tokens.detach().to("cpu", torch.int64).contiguous()
    atomic_write(run_dir / rel, lambda p: torch.save(data, p))
    return rel


def load_samples(run_dir: str | Path, cell_id: str) -> torch.Tensor:
    """The stored token ids ``(b, L)`` of ``cell_id`` (``weights_only`` load)."""
    return torch.load(Path(run_dir) / "samples" / f"{cell_id}.pt", weights_only=True)


def shard_paths(run_dir: str | Path) -> list[Path]:
    """The finished shards, sorted by name (temporary files excluded)."""
    cells = Path(run_dir) / "cells"
    return sorted(p for p in cells.glob("*.parquet") if not p.name.startswith(TEMP_PREFIX))


def read_shard(path: Path, columns: list[str] | None = None) -> dict[str, Any]:
    """One shard's row as a dict (list columns as Python lists).

    Raises:
        pyarrow.ArrowException, OSError, IndexError: the file is not a one-row shard
        (:func:`try_read_shard` turns these into a :class:`ShardProblem`).
    """
    table = pq.read_table(path, columns=columns)
    return table.to_pylist()[0]


class ShardProblem(str):
    """Why a shard could not be read (``"Type: message"``); what :func:`try_read_shard` returns."""


def try_read_shard(path: Path, columns: list[str] | None = None) -> dict[str, Any] | ShardProblem:
    """:func:`read_shard`, or a :class:`ShardProblem` when the file is corrupt or cut short.

    A file that vanished meanwhile (moved aside by another process) is also a problem.
    """
    try:
        return read_shard(path, columns)
    except Exception as e:  # noqa: BLE001 -- any failure to read makes the shard unusable
        return ShardProblem(f"{type(e).__name__}: {e}")


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def corrupt_message(path: Path, problem: str) -> str:
    """Why a cell counts as failed: its shard cannot be read, and what to do about it."""
    return (
        f"CorruptShard: cells/{path.name} cannot be read ({problem}); run the experiment "
        f"again to move it aside (cells/{path.name}{CORRUPT_SUFFIX}) and re-measure the cell"
    )


def move_aside(path: Path, why: str = "") -> Path | None:
    """Rename an unreadable ``path`` to ``<name>.corrupt`` (``.corrupt-1``, … if taken); warn.

    Returns the new path, or None when the file was gone already (another process moved it).
    """
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}-{n}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    fsync_dir(path.parent)
    note = f" ({why})" if why else ""
    warn(
        f"shard {path.parent.name}/{path.name} is unreadable{note}; moved to "
        f"{target.name} (kept for inspection) and its cell counts as not yet measured."
    )
    return target


def finished(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``cell_id → {status, group_id, batch_size}`` of the finished cells (for resume).

    An unreadable shard is moved aside (:func:`move_aside`, with a warning on stderr), so its
    cell is pending and the run re-measures it.
    """
    cols = ["cell_id", "status", "group_id", "batch_size"]
    out = {}
    for p in shard_paths(run_dir):
        row = try_read_shard(p, cols)
        if isinstance(row, ShardProblem):
            move_aside(p, row)
            continue
        out[row["cell_id"]] = row
    return out


def read_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every shard's row; an unreadable one becomes an ``error`` row naming it (and a warning).

    Nothing is moved: readers (``dlmbench show``) leave the run folder as it is.
    """
    rows = []
    for p in shard_paths(run_dir):
        row = try_read_shard(p)
        if isinstance(row, ShardProblem):
            msg = corrupt_message(p, row)
            warn(f"cell {p.stem}: {msg}.")
            row = {"cell_id": p.stem, "status": "error", "error": msg}
        rows.append(row)
    return rows


def load_results(run_dir: str | Path, evaluator: str | None = None) -> pd.DataFrame:
    """All finished cells of a run as one DataFrame (one row per cell, in sweep order).

    Every design column is present (NaN where a row has no value); list columns hold lists.
    Quality shards (``quality/``, written by ``dlmbench quality``) are joined on ``cell_id``:
    those of ``evaluator`` if given, else of the evaluator that scored the most cells.
    An unreadable shard is an ``error`` row naming it (and a warning on stderr), not a crash.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``cells/`` folder.
    """
    import pandas as pd  # here, not at import: cell processes write shards without pandas

    run_dir = Path(run_dir)
    if not (run_dir / "cells").is_dir():
        raise FileNotFoundError(
            f"'{run_dir}' is not a run folder (no cells/); pass results/<run_id> "
            "(dlmbench show lists what a run holds)."
        )
    df = pd.DataFrame.from_records(read_rows(run_dir))
    for col in DESIGN_COLUMNS:
        if col not in df.columns:
            df[col] = math.nan
    if "cell_index" in df.columns and len(df):
        df = df.sort_values("cell_index", kind="stable").reset_index(drop=True)
    return join_quality(df, run_dir, evaluator)


def join_quality(df: pd.DataFrame, run_dir: Path, evaluator: str | None) -> pd.DataFrame:
    """Attach one evaluator's quality columns to the cell rows (left join on ``cell_id``)."""
    import pandas as pd

    files = sorted((run_dir / "quality").glob("*.parquet")) if len(df) else []
    if not files:
        return df
    frames = [f for f in (read_quality_shard(p) for p in files) if f is not None]
    if not frames:
        return df
    q = pd.concat(frames, ignore_index=True)
    if evaluator is None:
        evaluator = q["evaluator"].value_counts().index[0]
    q = q[q["evaluator"] == evaluator].drop_duplicates("cell_id", keep="last")
    keep = [c for c in q.columns if c == "cell_id" or c not in df.columns or df[c].isna().all()]
    df = df.drop(columns=[c for c in keep if c != "cell_id" and c in df.columns])
    return df.merge(q[keep], on="cell_id", how="left")


def read_quality_shard(path: Path) -> pd.DataFrame | None:
    """A quality shard as a DataFrame, or None (with a warning) when it cannot be read."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 -- an unreadable shard is reported, not fatal
        warn(
            f"quality shard {path.parent.name}/{path.name} cannot be read "
            f"({type(e).__name__}: {e}); it is ignored. Re-score with dlmbench quality --force."
        )
        return None


def resolve_run(spec: str, output_dir: str | Path = "results") -> Path:
    """A run folder from a path, a run id, or an experiment name (the newest match).

    Raises:
        FileNotFoundError: nothing matches; the message lists the runs present.
    """
    p = Path(spec)
    if (p / "cells").is_dir():
        return p
    base = Path(output_dir)
    runs = sorted(
        (d for d in base.glob("*") if (d / "cells").is_dir()), key=lambda d: d.stat().st_mtime
    )
    exact = [d for d in runs if d.name == spec]
    named = [d for d in runs if d.name.rsplit("-", 1)[0] == spec]
    if exact or named:
        return (exact or named)[-1]
    have = ", ".join(d.name for d in runs) or "none"
    raise FileNotFoundError(f"no run '{spec}' (as a path or under '{base}'); runs there: {have}.")
