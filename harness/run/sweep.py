"""The sweep: a config becomes cells, and the executor it names runs the pending ones.

This is the top of :mod:`harness.run`: it chooses the executor (``local`` in this process,
``local-multi`` or ``slurm`` in one fresh process per cell); every executor runs cells through
:func:`harness.run.runner.run_cell` and writes the same shards into the same run folder, so a
run started by one executor is resumed by any other.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dlmcore.configio import ConfigError
from harness.run import executors
from harness.run.experiment import Experiment, check_run_id, expand_cells, load_experiment


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
        run_id: force the run folder name (default ``<name>-<hash>``); one folder name, checked
            by :func:`~harness.run.experiment.check_run_id`.
        progress: show a tqdm bar with ETA over the pending cells.
        retry_failed: also re-run cells whose shard records error, oom or skipped.
        on_row: called with each row after its shard is written.

    Raises:
        ConfigError: the config or ``run_id`` is invalid (nothing is written).
    """
    if run_id is not None and (problems := check_run_id(run_id)):
        raise ConfigError(problems, "Invalid run id")
    if isinstance(config, Experiment):
        exp, (cells, problems) = config, expand_cells(config)
        if problems:
            raise ConfigError(problems, "Invalid experiment")
    else:
        exp, cells = load_experiment(config, overrides)
    if problems := executor_problems_here(exp):
        raise ConfigError(problems, "Cannot start the executor")
    run = executors.run_local if exp.executor.kind == "local" else executors.run_parallel
    return run(
        exp, cells, run_id=run_id, progress=progress, retry_failed=retry_failed, on_row=on_row
    )


def executor_problems_here(exp: Experiment) -> list[str]:
    """What this host lacks for ``exp``'s executor, checked before the run folder is made.

    The Slurm executor on a real cluster needs ``srun`` / ``sbatch`` on ``PATH``.
    """
    ex = exp.executor
    if ex.kind != "slurm" or ex.cluster != "slurm":
        return []
    missing = [tool for tool in ("srun", "sbatch") if shutil.which(tool) is None]
    if not missing:
        return []
    return [
        f"executor.kind=slurm needs {' and '.join(missing)} on PATH, and this host has none: run "
        "from a Slurm login node, or use executor.cluster=local to try the Slurm path here, or "
        "executor.kind=local-multi."
    ]
