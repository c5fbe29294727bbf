"""The sweep: a config becomes cells, and the executor it names runs the pending ones.

This is the top of :mod:`harness.run`: it chooses the executor (``local`` in this process,
``local-multi`` or ``slurm`` in one fresh process per cell); every executor runs cells through
:func:`harness.run.runner.run_cell` and writes the same shards into the same run folder, so a
run started by one executor is resumed by any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dlmcore.configio import ConfigError
from harness.run import executors
from harness.run.experiment import Experiment, expand_cells, load_experiment


def run_experiment(
    config: Experiment | str | Path,
    overrides: Sequence[str] = (),
    *,
    run_id: str | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Run every cell of an experiment that has no shard yet; return the run folder.

    Args:
        config: an :class:`Experiment` or a YAML path.
        overrides: ``a.b=value`` overrides (YAML path only).
        run_id: force the run folder name (default ``<name>-<hash>``).
        progress: show a tqdm bar with ETA over the pending cells.
        retry_failed: also re-run cells whose shard records error, oom or skipped.
        on_row: called with each row after its shard is written.

    Raises:
        ConfigError: the config is invalid (nothing is written).
    """
    if isinstance(config, Experiment):
        exp, (cells, problems) = config, expand_cells(config)
        if problems:
            raise ConfigError(problems, "Invalid experiment")
    else:
        exp, cells = load_experiment(config, overrides)
    run = executors.run_local if exp.executor.kind == "local" else executors.run_parallel
    return run(
        exp, cells, run_id=run_id, progress=progress, retry_failed=retry_failed, on_row=on_row
    )
