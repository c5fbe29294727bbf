"""Experiment configs: a YAML file → a validated :class:`Experiment` → a list of :class:`Cell`.

The YAML repeats the frozen dataclasses below field for field::

    name: smoke
    checkpoints:                      # name → path, or random:<size> (+ vocab_size)
      tiny: {path: "random:tiny", vocab_size: 64}
    samplers:
      - {name: mdlm_T, sampler: mdlm, checkpoint: tiny, params: {num_steps: [4, 8]}}
      - sampler: bd3lm                # name defaults to the registry name
        zip: [{block_size: [4, 8], steps_per_block: [2, 4]}]   # these move together
    seq_lens: [16]
    batch_sizes: [1, 2]
    seeds: [0]
    device: cpu
    dtype: float32                    # bfloat16 = autocast (GPU devices only)
    timing: {mode: full, repeats: 5, warmup: 1}

A list value under ``params`` is a grid axis (cartesian product with the other axes); a ``zip``
group's lists move together. For a sampler field whose own type is a list, only a list of lists
is an axis. Validation reports every problem at once (:func:`load_experiment`).

Each grid point is a :class:`Cell`; its ``cell_id`` hashes its fully resolved configuration
(sampler config with defaults, model config, sizes, seed, device, dtype, timing), so it keys
resume. Labels and the order of YAML keys and lists do not enter the hash.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from dlmcore.configio import (
    INT64_MAX,
    ConfigError,
    coerce,
    collect,
    key_text,
    parse_scalar,
    to_dict,
)
from dlmcore.errors import UserError, short_repr
from dlmcore.registry import did_you_mean
from dlmcore.yamlio import load_yaml_file
from harness.measure.contention import TrustThresholds
from harness.model import modelspec
from harness.model.config import DiTConfig
from harness.model.hf.config import HFModelConfig
from samplers.base import SAMPLERS, SamplerError, check_family

UNHASHED_TIMING = ("max_other_cores", "max_cv", "min_trusted_repeats", "contention", "max_wait_s")
"""Timing fields that judge a measurement rather than define it: left out of ``cell_id``."""

CELL_SCHEMA = 1
"""Version of the resolved-cell layout that is hashed; bump it when the layout changes."""

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
MAX_NAME_CHARS = 100
"""Longest run name, sampler label or run id (a run folder is ``<name>-<hash>``)."""
MAX_SIZE = 2**31 - 1
"""Upper bound of lengths, batch sizes, repeats and other counts (int32, as torch sizes)."""
MAX_SEED = INT64_MAX
"""Seeds lie in ``0 … 2**63 - 1`` (``torch.manual_seed`` and an int64 column take them)."""
MAX_CELLS = 10_000
"""Default :attr:`Experiment.max_cells`."""
DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class CheckpointSpec:
    """Where a model comes from.

    Attributes:
        path: a checkpoint directory or file, ``random:<size>`` for seeded random weights
            (family taken from the sampler using it), or ``hf:<local directory>`` for a Hugging
            Face diffusion LM behind an adapter (``docs/hf.md``; family from the adapter).
        vocab_size: V including the mask token; required for ``random:`` specs, not allowed for
            paths (read from the checkpoint).
        init_seed: weight seed of ``random:`` specs.
        model: extra :class:`DiTConfig` fields for ``random:`` specs (e.g. ``bos_index``).
        hf: the options of an ``hf:`` spec, ``HFOptions`` field for field
            (``trust_remote_code``, ``mask_id``, ``dtype``, ``chat_template``, ``hub_id``, ...);
            only for ``hf:`` paths.
    """

    path: str
    vocab_size: int | None = None
    init_seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    hf: dict[str, Any] = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        """Whether this is a ``random:<size>`` spec."""
        return modelspec.is_random(self.path)

    @property
    def is_hf(self) -> bool:
        """Whether this is an ``hf:<local directory>`` spec."""
        return modelspec.is_hf(self.path)

    def problems(self) -> list[str]:
        """Missing paths, unknown sizes, misplaced or invalid fields."""
        if self.is_hf:
            return self._hf_problems()
        out = []
        if self.hf:
            out.append(
                f"'hf' options apply to hf: specs only; '{key_text(self.path, 240)}' is not one. "
                "Remove 'hf', or write path: 'hf:<local directory>' for a Hugging Face model."
            )
        return out + self._path_problems()

    def _hf_problems(self) -> list[str]:
        """The ``hf:`` spec's options and directory (torch-free), and misplaced fields."""
        out = []
        if self.vocab_size is not None or self.model:
            out.append(
                "'vocab_size'/'model' apply to random: specs only; "
                f"'{key_text(self.path, 240)}' is an hf: spec (its config.json defines them). "
                "Remove them, and put adapter options under 'hf'."
            )
        return out + modelspec.hf_problems(self.path, self.hf)

    def _path_problems(self) -> list[str]:
        if not self.is_random:
            out = []
            if not _exists(self.path):
                out.append(
                    f"checkpoint path '{key_text(self.path, 240)}' does not exist. Give an "
                    "existing checkpoint directory, or 'random:<size>' (dlmbench ls checkpoints)."
                )
            if self.vocab_size is not None or self.model:
                out.append(
                    "'vocab_size'/'model' apply to random: specs only; "
                    f"'{key_text(self.path, 240)}' is a path (its checkpoint defines them). "
                    "Remove them."
                )
            return out
        return self._random_problems()

    def _random_problems(self) -> list[str]:
        size = self.path[len(modelspec.RANDOM_PREFIX) :]
        out = []
        try:
            modelspec.random_config(size, "mdlm", self.vocab_size or 8, {})
        except ValueError as e:
            out.append(f"'{key_text(self.path, 240)}': {e}")
        if self.vocab_size is None or not 2 <= self.vocab_size <= MAX_SIZE:
            out.append(
                f"'vocab_size' is {self.vocab_size}; a '{key_text(self.path, 240)}' spec needs an "
                f"integer in 2 … {MAX_SIZE} (it includes the mask token), e.g. vocab_size: 64."
            )
        out += bound_problems("init_seed", self.init_seed, 0, MAX_SEED)
        names = [f.name for f in dataclasses.fields(DiTConfig) if f.name not in ("family",)]
        for key in self.model:
            if key not in names or key == "vocab_size":
                out.append(
                    f"unknown model field '{key_text(key)}'.{did_you_mean(key, names)} Allowed: "
                    f"{', '.join(n for n in names if n != 'vocab_size')} (family comes from the "
                    "sampler, vocab_size from 'vocab_size')."
                )
        return out


def _exists(path: str) -> bool:
    """``Path(path).exists()``, false for names the OS refuses (too long, NUL bytes)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler entry: a registry name, its parameter grid, and the checkpoint it runs on.

    Attributes:
        sampler: registry name (``dlmbench ls samplers``).
        name: label in the results (``label`` column); defaults to ``sampler``; unique.
        checkpoint: a key of ``checkpoints``; may be omitted when there is only one.
        params: sampler config fields; a list value is a grid axis.
        zip: groups of fields whose lists move together (equal lengths).
    """

    sampler: str
    name: str | None = None
    checkpoint: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    zip: tuple[dict[str, list[Any]], ...] = ()

    @property
    def label(self) -> str:
        """The results label: ``name`` or the registry name."""
        return self.name or self.sampler

    @property
    def where(self) -> str:
        """The label as messages quote it (a hostile label is cut short)."""
        return key_text(self.label)

    def problems(self) -> list[str]:
        """Bad labels and malformed ``zip`` groups."""
        out = name_problems("'name'", self.label)
        seen: set[str] = set(self.params)
        for i, group in enumerate(self.zip):
            where = f"'{self.where}': zip[{i}]"
            lengths = {key_text(k): len(v) for k, v in group.items()}
            if not group or 0 in lengths.values():
                out.append(
                    f"{where} is empty ({short_repr(group)}); give each field a non-empty list."
                )
            elif len(set(lengths.values())) > 1:
                out.append(
                    f"{where} lists have different lengths {short_repr(lengths)}; zipped fields "
                    "move together, so give them equal lengths (or move one to params for a "
                    "product)."
                )
            for key in group:
                if key in seen:
                    out.append(
                        f"{where}: '{key_text(key)}' also appears in params or another zip group."
                    )
                seen.add(key)
        return out


def name_problems(what: str, value: str) -> list[str]:
    """Problems of a name that becomes part of a path (a run name, a label, a run id).

    Args:
        what: how the message calls it (``'name'``, ``'--run-id'``).
        value: the name.

    Returns:
        Sentences; empty when ``value`` matches :data:`NAME_RE` within :data:`MAX_NAME_CHARS`.
    """
    if not isinstance(value, str):
        return [f"{what} is {short_repr(value)} ({type(value).__name__}); expected a string."]
    if len(value) > MAX_NAME_CHARS:
        return [
            f"{what} is {short_repr(value)}; at most {MAX_NAME_CHARS} characters are allowed. "
            "Use a shorter name."
        ]
    if not NAME_RE.match(value):
        return [
            f"{what} is {short_repr(value)}; use letters, digits and _ . + - only, starting "
            "with a letter or digit (no '/', no '..')."
        ]
    return []


def check_run_id(value: str) -> list[str]:
    """Problems of a forced run id (``--run-id``): it names a folder under ``output_dir``.

    Refuses the empty string, ``.`` and ``..``, path separators and anything else outside
    :data:`NAME_RE`, and ids longer than :data:`MAX_NAME_CHARS`, so a run never writes outside
    ``output_dir``.

    Returns:
        Sentences; empty when the id is safe.
    """
    out = name_problems("run id", value)
    if out and isinstance(value, str) and (value in ("", ".", "..") or "/" in value):
        out[0] += " A run id names one folder inside output_dir; e.g. --run-id smoke-1."
    return out


@dataclass(frozen=True)
class TimingConfig:
    """How each cell is timed (measurement.md §2-§4).

    Attributes:
        mode: ``full`` (everything the sampler does) or ``profile`` (network calls only; sets
            the sampler's ``profile`` field).
        repeats: timed repeats (at least).
        warmup: untimed warm-up executions of the same plan.
        min_time_s: keep repeating until the timed total reaches this (optional).
        max_repeats: cap on repeats when ``min_time_s`` is set.
        save_samples: keep the first repeat's token ids in ``full`` mode.
        max_other_cores: a row is ``noisy`` (contention) when other processes used more than
            this many cores of ours during its timed repeats.
        max_cv: a row is ``noisy`` (high CV) past this coefficient of variation of its repeats.
        min_trusted_repeats: a row with fewer timed repeats is ``noisy`` (too few repeats).
        contention: before timing each cell, ``warn`` (time it, flag the row and say so),
            ``wait`` (look at the cores until other processes use at most ``max_other_cores``,
            up to ``max_wait_s``, then time it) or ``refuse`` (record it ``skipped`` while they
            do).
        max_wait_s: the longest ``contention: wait`` waits per cell.

    The last five only judge or schedule a measurement (:mod:`harness.measure.contention`);
    they are not part of the cell's hash, so changing them never re-measures a cell.
    """

    mode: Literal["full", "profile"] = "full"
    repeats: int = 5
    warmup: int = 1
    min_time_s: float | None = None
    max_repeats: int = 100
    save_samples: bool = True
    max_other_cores: float = 0.25
    max_cv: float = 0.10
    min_trusted_repeats: int = 3
    contention: Literal["warn", "wait", "refuse"] = "warn"
    max_wait_s: float = 60.0

    def trust_thresholds(self) -> TrustThresholds:
        """The :class:`TrustThresholds` these fields name."""
        return TrustThresholds(
            max_other_cores=self.max_other_cores,
            max_cv=self.max_cv,
            min_repeats=self.min_trusted_repeats,
        )

    def problems(self) -> list[str]:
        """Range checks."""
        out = []
        out += bound_problems("repeats", self.repeats, 1, MAX_SIZE, " (5 is a good start)")
        out += bound_problems("warmup", self.warmup, 0, MAX_SIZE)
        out += bound_problems("max_repeats", self.max_repeats, 1, MAX_SIZE)
        if self.min_time_s is not None and not 0 < self.min_time_s < math.inf:
            out.append(f"'min_time_s' is {self.min_time_s}; it must be > 0 and finite, or null.")
        for name in ("max_other_cores", "max_cv"):
            v = getattr(self, name)
            if not 0 < v < math.inf:
                out.append(f"'{name}' is {v}; it must be > 0 and finite.")
        out += bound_problems("min_trusted_repeats", self.min_trusted_repeats, 1, MAX_SIZE)
        if not 0 <= self.max_wait_s <= 86400:
            out.append(f"'max_wait_s' is {self.max_wait_s}; it must lie in 0 … 86400 seconds.")
        if self.max_repeats < self.repeats:
            out.append(
                f"'max_repeats' is {self.max_repeats}, below 'repeats' {self.repeats}; raise it."
            )
        return out


EXECUTOR_KINDS = ("local", "local-multi", "slurm")
"""``executor.kind`` values: see :class:`ExecutorConfig` and docs/executors.md."""

SLURM_INSTALL_HINT = "pip install 'dlmbench[slurm]'"


@dataclass(frozen=True)
class ExecutorConfig:
    """Where the cells run (docs/executors.md).

    Not part of any cell's hash: a run started by one executor is resumed by any other, and its
    rows are the same.

    Attributes:
        kind: ``local`` (this process, cells in sweep order; the default), ``local-multi`` (one
            worker per device, every cell in a fresh process), or ``slurm`` (job arrays through
            submitit; ``pip install 'dlmbench[slurm]'``).
        workers: local-multi: worker processes, at most one per device; default: one per GPU of
            ``devices`` on CUDA, 1 on CPU.
        devices: local-multi on CUDA: indices (among the visible GPUs) to use; default all.
        threads_per_worker: torch threads of each cell process; default cores // workers.
        pin_cpus: bind each worker's cells to their own cores; default on CPU only.
        cluster: slurm: ``slurm`` (sbatch), or submitit's ``local`` (processes here) or
            ``debug`` (in this process) for testing.
        partition: sbatch ``--partition``.
        account: sbatch ``--account``.
        qos: sbatch ``--qos``.
        time_min: wall-time limit of one array task, minutes.
        gpus_per_task: GPUs per array task; default 1 when ``device`` is CUDA, else 0.
        cpus_per_task: CPUs per array task (also its cells' torch threads).
        mem_gb: memory per array task, GB.
        array_parallelism: at most this many array tasks run at once.
        max_requeues: times a preempted or timed-out task is requeued (finished cells are kept).
        setup: shell lines run before each task (``module load ...``, ``source venv/bin/activate``).
        slurm_additional: extra sbatch options, verbatim (``{constraint: h100, exclusive: true}``).
        wait: block until every task has finished; ``false`` submits and returns (follow it with
            ``dlmbench status RUN``).
    """

    kind: Literal["local", "local-multi", "slurm"] = "local"
    workers: int | None = None
    devices: tuple[int, ...] | None = None
    threads_per_worker: int | None = None
    pin_cpus: bool | None = None
    cluster: Literal["slurm", "local", "debug"] = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 16
    max_requeues: int = 3
    setup: tuple[str, ...] = ()
    slurm_additional: dict[str, Any] = field(default_factory=dict)
    wait: bool = True

    def problems(self) -> list[str]:
        """Range checks, and submitit's presence for ``slurm``."""
        out = []
        for name, low in (
            ("workers", 1), ("threads_per_worker", 1), ("time_min", 1), ("gpus_per_task", 0),
            ("cpus_per_task", 1), ("array_parallelism", 1), ("max_requeues", 0),
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                out += bound_problems(name, value, low, MAX_SIZE)
        if self.mem_gb is not None and not self.mem_gb > 0:
            out.append(f"'mem_gb' is {self.mem_gb}; it must be > 0 or null.")
        if self.devices is not None:
            if not self.devices or any(not 0 <= d <= MAX_SIZE for d in self.devices):
                out.append(
                    f"'devices' is {short_repr(list(self.devices))}; give GPU indices >= 0, e.g. "
                    "[0, 1], or null for every visible GPU."
                )
            elif len(set(self.devices)) < len(self.devices):
                out.append(
                    f"'devices' repeats an index in {short_repr(list(self.devices))}; list each "
                    "once."
                )
        if self.kind == "slurm" and not submitit_available():
            out.append(
                "executor 'slurm' needs the submitit package, which is not installed. Install it "
                f"with: {SLURM_INSTALL_HINT} (or run with --executor local-multi)."
            )
        return out


def submitit_available() -> bool:
    """Whether ``import submitit`` works (the ``slurm`` executor's optional dependency)."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return False
    return True


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def executor_problems(ex: ExecutorConfig, device: str) -> list[str]:
    """Whether ``ex`` fits ``device``: a GPU per worker, workers × threads within the cores."""
    import torch

    if ex.kind == "local" or not DEVICE_RE.match(device):
        return []
    where = f"executor '{ex.kind}'"
    if device.startswith("cuda:") and device != "cuda:0":
        return [
            f"{where} gives each worker its own GPU (CUDA_VISIBLE_DEVICES), so 'device' must be "
            f"'cuda', not '{device}'; choose GPUs with executor.devices: [{device[5:]}]."
        ]
    if ex.kind == "slurm":
        return []
    cores = available_cores()
    if device.startswith("cuda"):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = list(ex.devices) if ex.devices is not None else list(range(have))
        out = [
            f"executor.devices lists GPU {d}, but only {have} GPU(s) are visible (0..{have - 1})."
            for d in devices
            if d >= have
        ]
        n, what = len(devices), f"{len(devices)} GPU(s) {devices}"
    else:
        out, n = [], (1 if device == "mps" else cores)
        what = "one MPS device" if device == "mps" else f"{cores} CPU core(s)"
    workers = ex.workers or (n if device.startswith("cuda") else 1)
    if workers > n:
        out.append(
            f"executor.workers is {workers}, more workers than devices: this machine has "
            f"{what}, and two timed cells must never share one. Set workers <= {n}."
        )
    if ex.threads_per_worker and workers * ex.threads_per_worker > cores:
        out.append(
            f"executor.workers × threads_per_worker = {workers} × {ex.threads_per_worker} > "
            f"{cores} cores; lower threads_per_worker to {max(1, cores // workers)} or fewer."
        )
    return out


MAX_TASK_EXAMPLES = 100_000
"""Most examples per task and level (each is generated, tokenised and scored)."""


@dataclass(frozen=True)
class TasksConfig:
    """Prompted tasks: every cell answers these prompts and is scored by exact match.

    With tasks, ``seq_lens`` are generation lengths (the answer budget after each prompt, as
    LLaDA's ``gen_length``), and each cell is one task × level (built-in) or the task file.

    Attributes:
        names: built-in tasks (``dlmbench ls tasks``); empty for none.
        levels: difficulty levels of the built-in tasks.
        n: examples per task × level (the first ``n`` lines of ``file``).
        seed: the examples' generation seed (built-in tasks are deterministic per seed).
        file: a JSONL task file, one ``{"prompt": …, "answer": …}`` per line.
    """

    names: tuple[str, ...] = ()
    levels: tuple[int, ...] = (1,)
    n: int = 32
    seed: int = 0
    file: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether the experiment has tasks at all."""
        return bool(self.names) or self.file is not None

    def problems(self) -> list[str]:
        """Known task names and levels, a readable task file, sane counts."""
        out = bound_problems("tasks.n", self.n, 1, MAX_TASK_EXAMPLES)
        out += _axis_problems("tasks.levels", self.levels, 0, 1000, "[1, 2]")
        out += bound_problems("tasks.seed", self.seed, 0, MAX_SEED)
        if self.names:
            from harness.tasks.suite import TASKS

            for name in self.names:
                if name not in TASKS:
                    out.append(f"tasks.names: {TASKS.unknown_message(key_text(name))}")
                    continue
                allowed = tuple(TASKS.get(name).levels)
                out += [
                    f"tasks.levels: task '{name}' has no level {lv}; it has levels "
                    f"{short_repr(list(allowed))}."
                    for lv in self.levels
                    if lv not in allowed
                ]
        if self.file is not None:
            from harness.tasks.files import load_jsonl

            try:
                load_jsonl(self.file)
            except (UserError, OSError) as e:
                out.append(f"tasks.file: {e}")
        return out

    def refs(self) -> list[TaskRef]:
        """One :class:`TaskRef` per cell-defining task: built-in task × level, then the file."""
        out = [
            TaskRef(name=n, level=lv, n=self.n, seed=self.seed)
            for n in self.names
            for lv in self.levels
        ]
        if self.file is not None:
            with contextlib.suppress(OSError):  # an unreadable file is one of problems()
                out.append(TaskRef.of_file(self.file, self.n))
        return out


@dataclass(frozen=True)
class TaskRef:
    """The task of one cell: a built-in task at a level, or a task file (by content hash)."""

    name: str
    level: int
    n: int
    seed: int = 0
    file: str | None = None
    file_sha256: str | None = None

    @classmethod
    def of_file(cls, path: str, n: int) -> TaskRef:
        """The file's task, ``jsonl:<stem>``; its content hash (not its path) keys the cell."""
        from harness.tasks.files import task_name

        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return cls(name=task_name(path), level=0, n=n, file=path, file_sha256=digest)

    def hashed(self) -> dict[str, Any]:
        """What defines the examples (the file's content, not its path)."""
        out = {"name": self.name, "level": self.level, "n": self.n, "seed": self.seed}
        if self.file_sha256:
            out["file_sha256"] = self.file_sha256
        return out


@dataclass(frozen=True)
class Experiment:
    """A whole sweep: checkpoints × samplers × params × seq_lens × batch_sizes × seeds.

    Attributes:
        name: run name (the run folder is ``<output_dir>/<name>-<hash>``).
        checkpoints: name → :class:`CheckpointSpec` (YAML shorthand: name → path string).
        samplers: the sampler entries.
        seq_lens: generated lengths L (1 … 2**31 - 1).
        batch_sizes: batch sizes b (1 … 2**31 - 1; ascending order is used, for the OOM
            backstop).
        seeds: cell seeds (schedule draws and sampling noise; 0 … 2**63 - 1).
        device: ``cpu``, ``cuda``, ``cuda:<i>`` or ``mps``.
        dtype: ``float32``, or ``bfloat16`` (autocast; weights stay fp32; not on ``cpu``).
        timing: see :class:`TimingConfig`.
        output_dir: where run folders go.
        executor: where the cells run; see :class:`ExecutorConfig` (not hashed into cells).
        max_cells: the most cells the grid may expand to (:func:`grid_size`, computed before
            anything is expanded); raise it for a deliberately large sweep.
        tasks: prompted tasks (:class:`TasksConfig`); with them every cell is a task × level
            scored by exact match, and ``seq_lens`` are generation lengths.
    """

    name: str
    checkpoints: dict[str, CheckpointSpec]
    samplers: tuple[SamplerSpec, ...]
    seq_lens: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    timing: TimingConfig = field(default_factory=TimingConfig)
    output_dir: str = "results"
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    max_cells: int = MAX_CELLS
    tasks: TasksConfig = field(default_factory=TasksConfig)

    def problems(self) -> list[str]:
        """Cross-field checks; a field left ``None`` was malformed and is skipped."""
        out = []
        if self.name is not None:
            out += name_problems("'name'", self.name)
        out += _axis_problems("seq_lens", self.seq_lens, 1, MAX_SIZE, "[256, 1024]")
        out += _axis_problems("batch_sizes", self.batch_sizes, 1, MAX_SIZE, "[1, 8]")
        out += _axis_problems("seeds", self.seeds, 0, MAX_SEED, "[0]")
        if self.max_cells is not None:
            out += bound_problems("max_cells", self.max_cells, 1, MAX_SIZE)
        if self.device == "cpu" and self.dtype == "bfloat16":
            out.append(
                "'dtype' is 'bfloat16' with device 'cpu': CPUs have no native bfloat16 matmul, "
                "so every cell would be timed and then discarded by the cost model. Use dtype: "
                "float32 on cpu, or a GPU device (device: cuda) for bfloat16."
            )
        if self.samplers is not None and not self.samplers:
            out.append("'samplers' is empty; add at least one entry (dlmbench ls samplers).")
        if self.checkpoints is not None and not self.checkpoints:
            out.append(
                "'checkpoints' is empty; add e.g. tiny: {path: 'random:tiny', vocab_size: 64}."
            )
        out += self._reference_problems()
        if self.device is not None:
            out += device_problems(self.device, present=not self._device_elsewhere)
            if self.executor is not None:
                out += executor_problems(self.executor, self.device)
        return out

    @property
    def _device_elsewhere(self) -> bool:
        """Whether the device may be absent from this host.

        True when cells run on Slurm nodes (this is the submitting host) and for a dry run priced
        on named hardware (``load_experiment(device_here=False)``).
        """
        ex = self.executor
        slurm = ex is not None and ex.kind == "slurm" and ex.cluster == "slurm"
        return slurm or not _DEVICE_HERE.get()

    def _reference_problems(self) -> list[str]:
        out = []
        specs = [s for s in self.samplers or () if s is not None]
        counts = collections.Counter(s.label for s in specs)
        for dup in sorted(x for x, n in counts.items() if n > 1):
            out.append(
                f"sampler name '{key_text(dup)}' is used {counts[dup]} times; "
                "give each entry a unique 'name'."
            )
        if self.checkpoints is None:
            return out
        names = list(self.checkpoints)
        for s in specs:
            if s.checkpoint is None and len(names) > 1:
                out.append(
                    f"sampler '{s.where}' has no 'checkpoint' and there are several "
                    f"({name_list(names)}); name one."
                )
            elif s.checkpoint is not None and s.checkpoint not in names:
                out.append(
                    f"sampler '{s.where}': checkpoint '{key_text(s.checkpoint)}' is not defined "
                    f"under 'checkpoints'.{did_you_mean(s.checkpoint, names)} "
                    f"Defined: {name_list(names)}."
                )
        return out


def name_list(names: Sequence[Any], limit: int = 20) -> str:
    """``a, b, c`` of the user's names for a message: each cut short, at most ``limit`` shown."""
    shown = ", ".join(key_text(n) for n in list(names)[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def bound_problems(name: str, value: int, low: int, high: int, hint: str = "") -> list[str]:
    """``["'name' is v; it must lie in low … high."]`` when ``value`` is outside, else ``[]``."""
    if low <= value <= high:
        return []
    return [f"'{name}' is {short_repr(value)}; it must lie in {low} … {high}{hint}."]


def _axis_problems(
    name: str, values: Sequence[int] | None, low: int, high: int, example: str
) -> list[str]:
    """Empty, out-of-range (``low … high``) and repeated values of a list axis; linear time."""
    if values is None:
        return []
    if not values:
        return [f"'{name}' is empty; give at least one value, e.g. {name}: {example}."]
    bad = [v for v in values if not low <= v <= high]
    out = [
        f"'{name}' contains {short_repr(v)}; values must lie in {low} … {high}." for v in bad[:5]
    ]
    if len(bad) > 5:
        out.append(f"'{name}' has {len(bad) - 5} more values outside {low} … {high}.")
    dups = sorted(v for v, n in collections.Counter(values).items() if n > 1)
    if dups:
        out.append(f"'{name}' repeats {short_repr(dups)}; list each value once.")
    return out


_DEVICE_HERE: contextvars.ContextVar[bool] = contextvars.ContextVar("device_here", default=True)
"""Whether validation requires the config's device on this host (see :func:`load_experiment`)."""


def device_problems(device: str, present: bool = True) -> list[str]:
    """Whether ``device`` is well-formed and (if ``present``) exists here; no CUDA context."""
    import torch

    if not DEVICE_RE.match(device):
        return [f"'device' is {short_repr(device)}; allowed: cpu, cuda, cuda:<index>, mps."]
    if not present:
        return []
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return [f"'device' is '{device}' but no CUDA device is available; use device: cpu."]
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            return [f"'device' is '{device}'; only {torch.cuda.device_count()} CUDA device(s)."]
    if device == "mps" and not torch.backends.mps.is_available():
        return ["'device' is 'mps' but MPS is not available; use device: cpu."]
    return []


# --------------------------------------------------------------------------------------------
# Loading, overrides, validation
# --------------------------------------------------------------------------------------------


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML (:mod:`dlmcore.yamlio`'s bounded safe loader) into a plain dict.

    Raises:
        ConfigError: missing file, not UTF-8, a YAML syntax error, an alias bomb or a duplicate
            key (:func:`dlmcore.yamlio.load_yaml_text`), or a top level that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"config file '{p}' not found; pass a YAML path (see configs/)."])
    raw = load_yaml_file(p)
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"'{p}' must hold a mapping of Experiment fields, got {short_repr(raw)}."]
        )
    return raw


def normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Expand YAML shorthands: ``checkpoints: {name: "path"}`` → ``{name: {path: "path"}}``."""
    raw = copy.deepcopy(raw)
    ck = raw.get("checkpoints")
    if isinstance(ck, dict):
        raw["checkpoints"] = {k: {"path": v} if isinstance(v, str) else v for k, v in ck.items()}
    return raw


def _strip_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _child(node: Any, tp: Any, part: str) -> tuple[Any, Any, str | None]:
    """One step of an override path: (child container key, child type, problem)."""
    tp = _strip_none(tp)
    if dataclasses.is_dataclass(tp):
        names = [f.name for f in dataclasses.fields(tp)]
        if part not in names:
            return (
                None,
                None,
                f"unknown key '{key_text(part)}'.{did_you_mean(part, names)} Allowed: "
                f"{', '.join(names)}.",
            )
        return part, get_type_hints(tp)[part], None
    if get_origin(tp) in (list, tuple):
        inner = [a for a in get_args(tp) if a is not Ellipsis][0]
        items = node if isinstance(node, list) else []
        if part.isdigit() and len(part) < 10 and int(part) < len(items):
            return int(part), inner, None
        labels = [x.get("name") or x.get("sampler") for x in items if isinstance(x, dict)]
        if part in labels:
            return labels.index(part), inner, None
        return (
            None,
            None,
            (
                f"no entry '{key_text(part)}'.{did_you_mean(part, [str(x) for x in labels])} Use "
                f"an index 0..{len(items) - 1} or a name: {name_list(labels)}."
            ),
        )
    if get_origin(tp) is dict:
        return part, get_args(tp)[1] if get_args(tp) else Any, None
    return part, Any, None


def _set_override(raw: dict[str, Any], key: str, value: Any) -> str | None:
    """Set ``raw[a][b]… = value`` after checking the path and the value's type."""
    node: Any = raw
    tp: Any = Experiment
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict | list):
            where = ".".join(parts[:i])
            return (
                f"'{key_text(where)}' is not a mapping in the config, so '{key_text(part)}' "
                "cannot be set."
            )
        k, tp, problem = _child(node, tp, part)
        if problem:
            return problem
        if i == len(parts) - 1:
            break
        if isinstance(node, dict) and k not in node:
            node[k] = {}
        node = node[k]
    if _strip_none(tp) is CheckpointSpec and isinstance(value, str):
        value = {"path": value}  # the YAML shorthand name: PATH
    trial: list[str] = []
    coerce(value, tp, key, trial)
    if trial:
        return trial[0]
    node[k] = value
    return None


def apply_overrides(
    raw: dict[str, Any], overrides: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """Apply CLI overrides ``a.b=value`` (YAML scalar syntax), each type-checked.

    List entries (``samplers``) are addressed by index or by name:
    ``samplers.mdlm.params.num_steps=8``.

    Returns:
        The new raw dict and the problems (one per bad override, which is then not applied).
    """
    raw = copy.deepcopy(raw)
    problems = []
    for text in overrides:
        key, sep, value_text = text.partition("=")
        if not sep or not key.strip():
            problems.append(
                f"override {short_repr(text)} is not of the form key=value; write e.g. "
                "timing.repeats=3."
            )
            continue
        try:
            value = parse_scalar(value_text)
        except ConfigError as e:
            problems.append(f"override {short_repr(text)}: {'; '.join(e.problems)}")
            continue
        problem = _set_override(raw, key.strip(), value)
        if problem:
            problems.append(f"override {short_repr(text)}: {problem}")
    return raw, problems


def _salvage(cls: type, raw: dict[str, Any], prefix: str = "") -> tuple[Any, list[str]]:
    """``cls`` built from the parts of ``raw`` that type-check, and its value-check problems.

    A field that does not type-check takes its default (``None`` when it has none), so the
    value and cross-field checks still run, and report, when another part of the file is
    malformed. Checkpoint entries that fail any check become ``None``; sampler entries are kept
    when they type-check. ``problems()`` of every rebuilt part is run with configio's prefixes.
    """
    hints = get_type_hints(cls)
    kw: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cls):
        where = f"{prefix}.{f.name}" if prefix else f.name
        value, tp = raw.get(f.name, dataclasses.MISSING), hints[f.name]
        if value is dataclasses.MISSING:
            kw[f.name] = _default(f)
        elif cls is Experiment and f.name == "checkpoints" and isinstance(value, dict):
            kw[f.name] = {k: _clean(CheckpointSpec, v, f"{where}.{k}") for k, v in value.items()}
        elif cls is Experiment and f.name == "samplers" and isinstance(value, list):
            built = [collect(SamplerSpec, v, f"{where}[{i}]") for i, v in enumerate(value)]
            kw[f.name] = tuple(obj for obj, _ in built)
        elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
            kw[f.name], more = _salvage(tp, value, where)
            problems += more
        else:
            kw[f.name] = _salvage_value(f, value, tp, where)
    obj = cls(**kw)
    check = getattr(obj, "problems", None)
    if callable(check):
        problems += [f"{prefix}: {p}" if prefix else p for p in check()]
    return obj, problems


def _salvage_value(f: dataclasses.Field, value: Any, tp: Any, where: str) -> Any:
    """``value`` if it type-checks; for a list, the items that do; else the field's default.

    Keeping the good items of a list lets its range checks still run (``[0, "x"]`` reports
    the 0 as well as the string).
    """
    trial: list[str] = []
    out = coerce(value, tp, where, trial)
    if not trial:
        return out
    if get_origin(tp) is tuple and isinstance(value, list | tuple):
        inner = get_args(tp)[0]
        kept = [v for v in value if not _coerce_problems(v, inner)]
        return tuple(kept) if kept else _default(f)
    return _default(f)


def _coerce_problems(value: Any, tp: Any) -> list[str]:
    trial: list[str] = []
    coerce(value, tp, "-", trial)
    return trial


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _clean(cls: type, data: Any, prefix: str) -> Any:
    """``cls`` from ``data`` if it passes every check, else ``None``."""
    obj, problems = collect(cls, data, prefix) if isinstance(data, dict) else (None, ["-"])
    return None if problems else obj


def validate(raw: dict[str, Any]) -> tuple[Experiment | None, list[Cell], list[str]]:
    """Type-check, cross-check and expand ``raw``; never raises for config problems.

    Returns:
        ``(experiment or None, cells, problems)``; the config is valid iff ``problems`` is empty.
    """
    raw = normalise(raw)
    exp, problems = collect(Experiment, raw)
    if exp is None:
        exp, more = _salvage(Experiment, raw)
        problems += more
    cells, more = expand_cells(exp)
    problems = list(dict.fromkeys(problems + more))
    return (exp if not problems else None), cells, problems


def load_experiment(
    path: str | Path, overrides: Sequence[str] = (), *, device_here: bool = True
) -> tuple[Experiment, list[Cell]]:
    """Load, override, validate and expand an experiment YAML.

    Args:
        path: the YAML file.
        overrides: ``a.b=value`` strings.
        device_here: ``False`` skips the check that the config's device exists on this host
            (a dry run priced on named hardware); its spelling is still checked.

    Raises:
        ConfigError: listing every problem found (bad overrides included).
    """
    raw, problems = apply_overrides(normalise(load_yaml(path)), overrides)
    token = _DEVICE_HERE.set(device_here)
    try:
        exp, cells, more = validate(raw)
    finally:
        _DEVICE_HERE.reset(token)
    problems += more
    if problems or exp is None:
        raise ConfigError(problems, f"Invalid experiment config '{path}'")
    return exp, cells


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hex SHA-256 prefix of canonical JSON (sorted keys): stable across processes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Cell:
    """One grid point: a sampler config on a model at (L, b, seed), timed on one device.

    Attributes:
        index: position in the sweep (progress order).
        label: the sampler entry's name.
        sampler: registry name.
        config: the sampler's frozen config (every field resolved, defaults included).
        checkpoint: name of the checkpoint entry.
        ckpt: its spec.
        model_cfg: the network config (family resolved).
        seq_len: L.
        batch_size: b.
        seed: cell seed.
        device: device string.
        dtype: ``float32`` or ``bfloat16``.
        timing: the timing settings.
        task: the prompted task of the cell (``seq_len`` is then the generation length).
    """

    index: int
    label: str
    sampler: str
    config: Any
    checkpoint: str
    ckpt: CheckpointSpec
    model_cfg: DiTConfig | HFModelConfig
    seq_len: int
    batch_size: int
    seed: int
    device: str
    dtype: str
    timing: TimingConfig
    task: TaskRef | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The sampler config as a plain dict."""
        return to_dict(self.config)

    def resolved(self) -> dict[str, Any]:
        """Everything that defines the measurement; hashed into :attr:`cell_id`."""
        return {
            "schema": CELL_SCHEMA,
            "sampler": self.sampler,
            "params": self.params,
            "model": {
                "source": self.ckpt.path,
                "init_seed": self.ckpt.init_seed if self.ckpt.is_random else None,
                "config": self.model_cfg.to_dict(),
            },
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "device": self.device,
            "dtype": self.dtype,
            "timing": {k: v for k, v in to_dict(self.timing).items() if k not in UNHASHED_TIMING},
            # only task cells carry the key, so cells without tasks keep their ids
            **({"task": self.task.hashed()} if self.task is not None else {}),
        }

    @cached_property
    def cell_id(self) -> str:
        """Hash of :meth:`resolved`."""
        return stable_hash(self.resolved())

    @cached_property
    def group_id(self) -> str:
        """Hash of the cell without batch size and seed: the OOM backstop's group."""
        res = self.resolved()
        del res["batch_size"], res["seed"]
        return stable_hash(res)


def _is_axis(value: Any, tp: Any) -> bool:
    """A list is a grid axis, except for a list-typed field, where only a list of lists is."""
    if not isinstance(value, list):
        return False
    if get_origin(_strip_none(tp)) in (list, tuple):
        return bool(value) and all(isinstance(v, list) for v in value)
    return True


def param_axes(
    spec: SamplerSpec, config_class: type, mode: str
) -> tuple[dict[str, Any], list[list[dict[str, Any]]], list[str]]:
    """Split ``params`` into fixed values and grid axes (a ``zip`` group is one axis).

    The timing mode sets the config's ``profile`` field.

    Returns:
        ``(fixed fields, axes, problems)``; each axis is a list of ``{field: value}`` choices.
    """
    hints = get_type_hints(config_class)
    fixed, axes, problems = {}, [], []
    for key, value in spec.params.items():
        if _is_axis(value, hints.get(key)):
            if not value:
                problems.append(
                    f"'{spec.where}': params.{key_text(key)} is an empty list (empty grid); "
                    "give at least one value."
                )
            axes.append([{key: v} for v in value])
        else:
            fixed[key] = value
    for group in spec.zip:
        n = min((len(v) for v in group.values()), default=0)
        axes.append([{k: v[i] for k, v in group.items()} for i in range(n)])
    keys = set(spec.params) | {k for g in spec.zip for k in g}
    if "profile" in keys:
        problems.append(
            f"'{spec.where}': set the timing mode with 'timing.mode: profile', not params.profile."
        )
    elif "profile" in hints:
        fixed["profile"] = mode == "profile"
    elif mode == "profile":
        problems.append(
            f"sampler '{key_text(spec.sampler)}' has no 'profile' field, so timing.mode "
            "'profile' cannot apply; use mode: full."
        )
    return fixed, axes, problems


def param_grid(
    spec: SamplerSpec, config_class: type, mode: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Expand ``params`` (product of list axes) and ``zip`` groups into parameter dicts.

    Returns:
        ``(combinations in grid order, problems)``; see :func:`param_axes`.
    """
    fixed, axes, problems = param_axes(spec, config_class, mode)
    return _combine(fixed, itertools.product(*axes)), problems


def _combine(fixed: dict[str, Any], choices: Any) -> list[dict[str, Any]]:
    return [dict(fixed, **{k: v for d in choice for k, v in d.items()}) for choice in choices]


def _probe_combos(fixed: dict[str, Any], axes: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """A few combinations that use every value of every axis (linear, not the product).

    Checks each value of an over-large grid without expanding it.
    """
    if any(not a for a in axes):
        return []
    n = max((len(a) for a in axes), default=1)
    return _combine(fixed, ([a[i % len(a)] for a in axes] for i in range(n)))


def entry_size(spec: SamplerSpec, config_class: type) -> int:
    """Parameter combinations of one entry, computed without expanding them."""
    hints = get_type_hints(config_class)
    sizes = [len(v) for k, v in spec.params.items() if _is_axis(v, hints.get(k))]
    sizes += [min((len(v) for v in g.values()), default=0) for g in spec.zip]
    return math.prod(sizes)


def grid_size(exp: Experiment) -> int:
    """How many cells ``exp`` expands to, by arithmetic alone (unknown samplers count 0)."""
    per_combo = math.prod(len(x or ()) for x in (exp.seq_lens, exp.batch_sizes, exp.seeds))
    if exp.tasks is not None and exp.tasks.enabled:
        per_combo *= len(exp.tasks.names) * len(exp.tasks.levels) + (exp.tasks.file is not None)
    combos = sum(
        entry_size(s, SAMPLERS.get(s.sampler).config_class)
        for s in exp.samplers or ()
        if s is not None and s.sampler in SAMPLERS
    )
    return combos * per_combo


def _model_config(spec: CheckpointSpec, family: str) -> DiTConfig | HFModelConfig:
    """The model config of ``spec``; an ``hf:`` spec's family is its adapter's."""
    if spec.is_random:
        size = spec.path[len(modelspec.RANDOM_PREFIX) :]
        return modelspec.random_config(size, family, spec.vocab_size or 0, spec.model)
    return modelspec.peek_config(spec.path, spec.hf if spec.is_hf else None)


def _entry_problems(
    cls: type,
    cfg: Any,
    label: str,
    model_cfg: DiTConfig | HFModelConfig,
    ckpt_name: str,
    seq_lens: Sequence[int],
) -> list[str]:
    """Family match and L divisible by the block size, for one built sampler config."""
    out = []
    try:
        check_family(cls(cfg), SimpleNamespace(config=model_cfg), ckpt_name)
    except (SamplerError, ConfigError) as e:
        out.append(f"'{key_text(label)}': {e}")
    block = getattr(cfg, "block_size", None) or (
        model_cfg.block_size if hasattr(cfg, "block_size") else None
    )
    for L in seq_lens:
        if block and L % block:
            out.append(
                f"'{key_text(label)}': seq_len {L} is not divisible by block_size {block}; use "
                f"seq_lens that are multiples of {block}, or another block_size."
            )
    return out + _hf_length_problems(label, model_cfg, seq_lens)


def _hf_length_problems(label: str, model_cfg: Any, seq_lens: Sequence[int]) -> list[str]:
    """An ``hf:`` model takes at most its ``model_length`` positions (no rotary extrapolation)."""
    limit = model_cfg.model_length if isinstance(model_cfg, HFModelConfig) else None
    return [
        f"'{key_text(label)}': seq_len {L} exceeds the {limit} positions of "
        f"'{model_cfg.spec.source}' (config.json max_position_embeddings); use seq_lens <= "
        f"{limit}."
        for L in seq_lens
        if limit is not None and L > limit
    ]


def expand_cells(exp: Experiment) -> tuple[list[Cell], list[str]]:
    """Every cell of ``exp`` in run order (entry, params, L, b ascending, seed), and the problems.

    The grid's size is computed first: past ``exp.max_cells`` no cell is built, and each entry's
    values are still checked (every value of every axis, not their product). Every entry is
    checked, whatever the others' problems. Parts of ``exp`` left ``None`` by :func:`_salvage`
    are skipped.
    """
    problems: list[str] = []
    n, limit = grid_size(exp), exp.max_cells or MAX_CELLS
    build = n <= limit
    if not build:
        problems.append(
            f"the grid has {n} cells; the limit is {limit} (set `max_cells` to raise it, or "
            "shorten seq_lens, batch_sizes, seeds or the params lists)."
        )
    cells: list[Cell] = []
    model_cfgs: dict[tuple[str, str], DiTConfig | HFModelConfig] = {}
    for spec in [s for s in exp.samplers or () if s is not None]:
        more, built = _expand_entry(exp, spec, model_cfgs, start=len(cells), build=build)
        problems += more
        cells += built
    return cells, problems + _duplicate_problems(cells)


def _expand_entry(
    exp: Experiment,
    spec: SamplerSpec,
    model_cfgs: dict[tuple[str, str], DiTConfig | HFModelConfig],
    start: int,
    build: bool,
) -> tuple[list[str], list[Cell]]:
    """One entry's problems and (if ``build``) cells; ``model_cfgs`` caches model configs."""
    if spec.sampler not in SAMPLERS:
        return [f"'{spec.where}': {SAMPLERS.unknown_message(key_text(spec.sampler))}"], []
    cls = SAMPLERS.get(spec.sampler)
    ckpts = exp.checkpoints or {}
    ckpt_name = spec.checkpoint or (next(iter(ckpts)) if len(ckpts) == 1 else None)
    ckpt = ckpts.get(ckpt_name) if ckpt_name else None
    problems, cells, model_cfg = [], [], None
    if ckpt is not None:
        key = (ckpt_name, cls.families[0])
        try:
            model_cfg = model_cfgs.get(key) or _model_config(ckpt, cls.families[0])
            model_cfgs[key] = model_cfg
        except (ValueError, TypeError, OSError) as e:
            problems.append(f"checkpoint '{ckpt_name}': cannot read its model config: {e}")
    mode = exp.timing.mode if exp.timing else "full"
    fixed, axes, more = param_axes(spec, cls.config_class, mode)
    problems += more
    combos = _combine(fixed, itertools.product(*axes)) if build else _probe_combos(fixed, axes)
    for params in combos:
        cfg, more = collect(cls.config_class, params, prefix=f"samplers.{spec.where}.params")
        problems += more
        if more or cfg is None or model_cfg is None:
            continue
        # with tasks, seq_lens are generation lengths: the runner fills the last block itself
        lengths = () if exp.tasks is not None and exp.tasks.enabled else exp.seq_lens or ()
        problems += _entry_problems(cls, cfg, spec.label, model_cfg, ckpt_name, lengths)
        if build:
            cells += _cells_of(exp, spec, cfg, ckpt_name, ckpt, model_cfg, start=start + len(cells))
    return list(dict.fromkeys(problems)), cells


def _duplicate_problems(cells: Sequence[Cell]) -> list[str]:
    """One sentence per cell id that two entries share; linear in the number of cells."""
    labels: dict[str, list[str]] = collections.defaultdict(list)
    for c in cells:
        labels[c.cell_id].append(c.label)
    return [
        f"entries {short_repr(same)} produce identical cells ({dup}); remove the duplicate."
        for dup, same in sorted(labels.items())
        if len(same) > 1
    ]


def _cells_of(
    exp: Experiment,
    spec: SamplerSpec,
    cfg: Any,
    ckpt_name: str,
    ckpt: CheckpointSpec,
    model_cfg: DiTConfig | HFModelConfig,
    start: int,
) -> list[Cell]:
    if not (
        exp.seq_lens and exp.batch_sizes and exp.seeds and exp.timing and exp.device and exp.dtype
    ):
        return []
    out = []
    tasks: list[TaskRef | None] = [None]
    if exp.tasks is not None and exp.tasks.enabled:
        tasks = list(exp.tasks.refs())
    grid = itertools.product(tasks, sorted(exp.seq_lens), sorted(exp.batch_sizes), exp.seeds)
    for task, L, b, seed in grid:
        out.append(
            Cell(
                index=start + len(out),
                label=spec.label,
                sampler=spec.sampler,
                config=cfg,
                checkpoint=ckpt_name,
                ckpt=ckpt,
                model_cfg=model_cfg,
                seq_len=L,
                batch_size=b,
                seed=seed,
                device=exp.device,
                dtype=exp.dtype,
                timing=exp.timing,
                task=task,
            )
        )
    return out


def run_id_for(exp: Experiment, cells: Sequence[Cell]) -> str:
    """``<name>-<hash of the (cell_id, label) set>``: the same config resumes the same run."""
    return f"{exp.name}-{stable_hash(sorted((c.cell_id, c.label) for c in cells), 8)}"
