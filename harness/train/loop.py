"""Train the small MDLM, BD3-LM, Eso-LM (B) and AR checkpoints on the offline corpus.

    /work/main/.venv/bin/python -m harness.train configs/train/mdlm.yaml [a=value ...]

With ``data: tasks`` or ``mix`` the rows are prompt-conditioned task rows of the task suite
(``harness.train.taskdata``; mixed with corpus windows for ``mix``), the prompt is never corrupted
nor scored, and every validation also reports the held-out task NELBO and exact-match accuracy of
greedy one-token-per-step decoding per task and level (``harness.train.taskeval``).

The loop follows ``training.md`` §1–§6: AdamW, linear warm-up then cosine (or constant) learning
rate, gradient-norm clip, an EMA with the warm-up decay d_n = min(0.9999, (1 + n)/(10 + n)) whose
weights are validated and shipped, periodic validation NELBO/PPL on a fixed subset with a fixed
seed, and a final validation on the whole held-out split. The output directory (our checkpoint
format, ``model.checkpoints``) holds ``config.json`` (network config, resolved training config
and its hash, command, metrics), ``model.safetensors`` (EMA weights) and ``train_log.csv``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from dlmcore.configio import ConfigError, from_dict, parse_scalar, to_dict
from harness.model.network import MODEL_SIZES, DiT, DiTConfig
from harness.train.objectives import OBJECTIVES, LossTerms, ObjectiveConfig
from harness.train.taskdata import EncodedTasks, SuiteFn
from harness.train.tokenizer import REPO_ROOT

TASK_FIELDS = {
    "data": "corpus",
    "task_fraction": 0.5,
    "tasks": None,
    "task_levels": None,
    "task_pool_per": 2000,
    "task_val_per": 16,
    "task_decode": "left_to_right",
}
"""Fields added for task training and their defaults; at their defaults they stay out of
:func:`config_hash`, so every earlier config keeps its hash."""

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """One training run; ``configs/train/<name>.yaml`` repeats it field for field.

    Attributes:
        name: output directory name under ``out_dir``.
        family: ``mdlm``, ``bd3lm``, ``esolm`` or ``ar``.
        model_size: a ``harness.model.network.MODEL_SIZES`` name (``cpu-s``, ``cpu-m``, ...).
        seq_len: L, the row length (BOS included).
        block_size: BD3-LM L′ (required for ``bd3lm``, ignored otherwise).
        corpus: corpus file (relative paths are relative to the repository root).
        tokenizer: tokenizer file.
        data: ``corpus`` (corpus windows only, as before), ``tasks`` (task rows only) or
            ``mix`` (``task_fraction`` of every batch task rows, the rest corpus windows).
        task_fraction: ``mix``: the share of task rows per batch, round(task_fraction · b).
        tasks: task names of ``harness.tasks.suite.TASKS``; None = every built-in task.
        task_levels: levels of every task; None = all levels of each.
        task_pool_per: training examples drawn per (task, level) (seed ``seed``), before the
            held-out ones are removed.
        task_val_per: held-out examples per (task, level) (seed ``val_seed``), for the task
            NELBO and the exact-match accuracy.
        task_decode: greedy decoding of the diffusion families for the accuracy:
            ``left_to_right`` or ``confidence`` (one token per call either way; AR is left to
            right).
        batch_size: b, rows per optimiser step.
        steps: optimiser steps.
        lr: peak learning rate.
        lr_min: final learning rate of the cosine (``lr_schedule: cosine``).
        lr_schedule: ``cosine`` (warm-up, then cosine to ``lr_min``) or ``constant``.
        warmup_steps: linear warm-up steps from 0.
        adam_beta1: AdamW β₁.
        adam_beta2: AdamW β₂.
        adam_eps: AdamW ε.
        weight_decay: AdamW weight decay.
        grad_clip: maximum gradient norm.
        ema: EMA decay cap (the warm-up formula binds below it).
        dropout: residual dropout.
        sampling_eps: ε_s, lower end of t.
        antithetic: stratified t.
        loss_type: ``elbo`` or ``low_var`` (Eso-LM).
        clip_min: BD3-LM β.
        clip_max: BD3-LM ω.
        resample: BD3-LM resampling of out-of-range blocks.
        init_from: checkpoint directory whose weights start both the model and the EMA.
        snapshot_step: also save the EMA weights after this step (the MDLM run feeds BD3-LM).
        snapshot_dir: where that snapshot goes.
        val_every: steps between validations on the fixed subset (0 = never).
        val_rows: rows in the fixed validation subset.
        val_batch_size: rows per validation forward.
        val_seed: seed of the subset choice and of the validation noise.
        final_validation: validate on the whole held-out split at the end.
        log_every: steps between training-loss rows of ``train_log.csv``.
        seed: seed of the initialisation, the data order and the training noise.
        threads: torch intra-op threads.
        save_dtype: dtype of the shipped weights (``float16`` halves the file; the final
            validation runs on the rounded weights so the metrics describe the file).
        out_dir: parent directory of the output.
    """

    name: str
    family: Literal["mdlm", "bd3lm", "esolm", "ar"]
    model_size: str = "cpu-s"
    seq_len: int = 128
    block_size: int | None = None
    corpus: str = "data/corpus/corpus.jsonl.xz"
    tokenizer: str = "checkpoints/tokenizer/tokenizer.json"
    data: Literal["corpus", "tasks", "mix"] = "corpus"
    task_fraction: float = 0.5
    tasks: tuple[str, ...] | None = None
    task_levels: tuple[int, ...] | None = None
    task_pool_per: int = 2000
    task_val_per: int = 16
    task_decode: Literal["left_to_right", "confidence"] = "left_to_right"
    batch_size: int = 16
    steps: int = 1500
    lr: float = 1e-3
    lr_min: float = 1e-4
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.9999
    dropout: float = 0.0
    sampling_eps: float = 1e-3
    antithetic: bool = True
    loss_type: Literal["elbo", "low_var"] = "elbo"
    clip_min: float = 1e-3
    clip_max: float = 1.0
    resample: bool = False
    init_from: str | None = None
    snapshot_step: int | None = None
    snapshot_dir: str | None = None
    val_every: int = 250
    val_rows: int = 128
    val_batch_size: int = 16
    val_seed: int = 1234
    final_validation: bool = True
    log_every: int = 10
    seed: int = 0
    threads: int = 2
    save_dtype: Literal["float32", "float16"] = "float16"
    out_dir: str = "checkpoints"

    def problems(self) -> list[str]:
        """Every value or combination problem, as sentences."""
        out = name_problems(self.name)
        if self.model_size not in MODEL_SIZES.names():
            out.append(
                f"'model_size' is {self.model_size!r}; allowed: {', '.join(MODEL_SIZES.names())}."
            )
        for name in ("seq_len", "batch_size", "steps", "val_rows", "val_batch_size", "threads"):
            if getattr(self, name) < 1:
                out.append(f"'{name}' is {getattr(self, name)}; it must be >= 1.")
        if self.seq_len < 2:
            out.append(f"'seq_len' is {self.seq_len}; rows need BOS plus at least one token.")
        if self.family == "bd3lm":
            if self.block_size is None or self.block_size < 1 or self.seq_len % self.block_size:
                out.append(
                    f"'block_size' is {self.block_size}; bd3lm needs a divisor of "
                    f"'seq_len' {self.seq_len}."
                )
            if not 0 < self.clip_min < self.clip_max <= 1:
                out.append(
                    f"'clip_min' {self.clip_min} and 'clip_max' {self.clip_max} must satisfy "
                    "0 < clip_min < clip_max <= 1."
                )
        if self.loss_type == "low_var" and self.family != "esolm":
            out.append(f"'loss_type' low_var is an Eso-LM setting; family is {self.family!r}.")
        if not 0 < self.sampling_eps < 1:
            out.append(f"'sampling_eps' is {self.sampling_eps}; it must lie in (0, 1).")
        if not 0 <= self.warmup_steps <= self.steps:
            out.append(f"'warmup_steps' is {self.warmup_steps}; allowed 0 … steps ({self.steps}).")
        if not 0 < self.lr_min <= self.lr:
            out.append(f"'lr_min' {self.lr_min} must lie in (0, lr = {self.lr}].")
        if not 0 < self.ema < 1:
            out.append(f"'ema' is {self.ema}; it must lie in (0, 1).")
        if (self.snapshot_step is None) != (self.snapshot_dir is None):
            out.append("'snapshot_step' and 'snapshot_dir' go together; set both or neither.")
        if self.snapshot_step is not None and not 1 <= self.snapshot_step <= self.steps:
            out.append(f"'snapshot_step' is {self.snapshot_step}; allowed 1 … {self.steps}.")
        return out + self.task_problems()

    def task_problems(self) -> list[str]:
        """Problems of the task-data fields (names and levels checked against the suite)."""
        if self.data == "corpus":
            set_ = [k for k in ("tasks", "task_levels") if getattr(self, k) is not None]
            return [
                f"'{k}' is set but 'data' is 'corpus' (task rows are not used); set data: tasks "
                "or data: mix, or remove it."
                for k in set_
            ]
        out = []
        for name in ("task_pool_per", "task_val_per"):
            if getattr(self, name) < 1:
                out.append(f"'{name}' is {getattr(self, name)}; it must be >= 1.")
        for name in ("tasks", "task_levels"):
            if getattr(self, name) is not None and not getattr(self, name):
                out.append(f"'{name}' is empty; list at least one, or leave it out for all.")
        if self.data == "mix":
            k = round(self.task_fraction * self.batch_size)
            if not 0 < self.task_fraction < 1 or not 1 <= k <= self.batch_size - 1:
                out.append(
                    f"'task_fraction' is {self.task_fraction}: with batch_size "
                    f"{self.batch_size} that is {k} task rows per batch; data: mix needs 1 … "
                    f"{self.batch_size - 1} (use data: tasks or data: corpus for all or none)."
                )
        return out + _suite_problems(self.tasks, self.task_levels)

    def objective(self) -> ObjectiveConfig:
        """The objective settings of this run."""
        return ObjectiveConfig(
            family=self.family,
            sampling_eps=self.sampling_eps,
            antithetic=self.antithetic,
            loss_type=self.loss_type,
            block_size=self.block_size,
            clip_min=self.clip_min,
            clip_max=self.clip_max,
            resample=self.resample,
        )


def _suite_problems(tasks: tuple[str, ...] | None, levels: tuple[int, ...] | None) -> list[str]:
    """Unknown task names (did-you-mean) and levels a task does not have."""
    try:
        from harness.tasks.suite import TASKS, default_tasks
    except ImportError:
        return []  # reported when the data are loaded (taskdata.default_suite)
    out, specs = [], []
    for name in tasks or default_tasks():
        if name in TASKS:
            specs.append(TASKS.get(name))
        else:
            out.append(f"'tasks' has {name!r}: {TASKS.unknown_message(name)}")
    for spec in specs:
        bad = [lv for lv in levels or () if lv not in spec.levels]
        if bad:
            out.append(
                f"'task_levels' has {bad}, which task {spec.name!r} does not have; its levels "
                f"are {list(spec.levels)}."
            )
    return out


def name_problems(name: Any) -> list[str]:
    """Problems with an output ``name``: it must be one plain folder name inside ``out_dir``.

    Refused: empty, ``.``, ``..``, anything with ``/``, a backslash, ``..`` or a NUL, and
    surrounding white space. Such names would make the output folder ``out_dir`` itself, its
    parent, or a folder elsewhere, which a run then replaces (with the default ``out_dir`` that
    is every shipped checkpoint and the tokenizer).
    """
    if not isinstance(name, str):
        return [f"'name' is {name!r}; it must be a folder name (a string)."]
    bad = []
    if name.strip() == "":
        bad.append("it is empty")
    elif name != name.strip():
        bad.append("it has leading or trailing white space")
    if name in (".", ".."):
        bad.append(f"'{name}' names the output folder's parent or the folder itself")
    else:
        if ".." in name:
            bad.append("it contains '..'")
        if "/" in name or "\\" in name:
            bad.append("it contains a path separator")
    if "\0" in name:
        bad.append("it contains a NUL character")
    if not bad:
        return []
    return [
        f"'name' is {name!r}: {'; '.join(bad)}. It must be one plain folder name inside "
        "'out_dir' (letters, digits, '-', '_', '.'), e.g. name: mdlm-run2."
    ]


def _is_our_checkpoint(path: Path) -> bool:
    """A directory holding a dlmbench checkpoint (``config.json`` with ``dlmbench_format``)."""
    try:
        return "dlmbench_format" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def output_problems(cfg: TrainConfig, overwrite: bool = False) -> list[str]:
    """Why this run must not write its output folder (and snapshot folder); empty when it may.

    Nothing is written before this check passes. An existing non-empty folder is replaced only
    with ``overwrite`` and only when it holds a dlmbench checkpoint (so no setting can make a run
    replace the repository, ``checkpoints/`` itself or any other folder).
    """
    out = name_problems(cfg.name)
    if out:
        return out
    targets = [("output folder", resolve(cfg.out_dir) / cfg.name)]
    if cfg.snapshot_dir is not None:
        snap = resolve(cfg.snapshot_dir)
        targets.append(("snapshot folder ('snapshot_dir')", snap))
        if os.path.abspath(snap) == os.path.abspath(targets[0][1]):
            out.append(f"'snapshot_dir' {str(snap)!r} is the output folder; choose another one.")
    for what, path in targets:
        if not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            continue  # an empty folder: nothing to lose
        if not overwrite:
            out.append(
                f"the {what} {str(path)!r} already exists; pass --overwrite to replace it, or "
                "choose another 'name' (or 'out_dir')."
            )
        elif path.is_symlink() or not path.is_dir() or not _is_our_checkpoint(path):
            out.append(
                f"the {what} {str(path)!r} exists and is not a dlmbench checkpoint (no "
                "config.json with 'dlmbench_format'); it is never replaced, even with "
                "--overwrite. Choose another 'name' (or 'out_dir')."
            )
    return out


def check_outputs(cfg: TrainConfig, overwrite: bool = False) -> None:
    """Raise :class:`ConfigError` listing :func:`output_problems` (before anything is written)."""
    problems = output_problems(cfg, overwrite)
    if problems:
        raise ConfigError(problems, "Refusing to write the training output")


def config_hash(cfg: TrainConfig) -> str:
    """First 16 hex digits of the SHA-256 of the resolved config (sorted JSON).

    The :data:`TASK_FIELDS` left at their defaults are not hashed (earlier configs keep theirs).
    """
    d = {k: v for k, v in to_dict(cfg).items() if k not in TASK_FIELDS or v != TASK_FIELDS[k]}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _parse_value(text: str) -> Any:
    """YAML scalar rules, plus ``3e-4``-style floats (YAML 1.1 reads them as strings)."""
    value = parse_scalar(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(path: str | os.PathLike[str], overrides: list[str] = ()) -> TrainConfig:
    """Read a training YAML (safe loader), apply ``a=value`` overrides, check everything.

    Raises:
        ConfigError: every problem at once (unknown keys with did-you-mean, types, ranges,
            malformed overrides).
    """
    from dlmcore.yamlio import load_yaml_file

    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"config file {str(p)!r} not found."], "Cannot load training config")
    data = load_yaml_file(p) or {}
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override {item!r} is not of the form key=value.")
            continue
        k, v = item.split("=", 1)
        _set_dotted(data, k.strip(), _parse_value(v))
    if problems:
        raise ConfigError(problems, "Invalid overrides")
    return from_dict(TrainConfig, data)


# ---------------------------------------------------------------------------------------------
# Pieces of the loop
# ---------------------------------------------------------------------------------------------


def resolve(path: str) -> Path:
    """A config path: absolute as is, relative to the repository root otherwise."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warm-up, then cosine/constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of the parameters with the warm-up decay (``training.md`` §1.8).

    After update n (1-based): shadow ← shadow − (1 − d_n)(shadow − θ),
    d_n = min(decay, (1 + n)/(10 + n)).

    Args:
        params: the parameters to track (their current values start the shadow).
        decay: the cap, 0.9999.
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float = 0.9999) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in params]
        self._stored: list[Tensor] | None = None

    def decay_at(self, n: int) -> float:
        """d_n for update number n (1-based)."""
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, params: list[torch.nn.Parameter]) -> None:
        """One EMA step after an optimiser step."""
        self.num_updates += 1
        one_minus_d = 1.0 - self.decay_at(self.num_updates)
        for s, p in zip(self.shadow, params, strict=True):
            s.sub_(one_minus_d * (s - p.detach()))

    @torch.no_grad()
    def store(self, params: list[torch.nn.Parameter]) -> None:
        """Keep a copy of the raw parameters (before :meth:`copy_to`)."""
        self._stored = [p.detach().clone() for p in params]

    @torch.no_grad()
    def copy_to(self, params: list[torch.nn.Parameter]) -> None:
        """Write the EMA weights into the parameters."""
        for s, p in zip(self.shadow, params, strict=True):
            p.copy_(s)

    @torch.no_grad()
    def restore(self, params: list[torch.nn.Parameter]) -> None:
        """Put back the raw parameters saved by :meth:`store`.

        Raises:
            RuntimeError: nothing was stored.
        """
        if self._stored is None:
            raise RuntimeError("EMA.restore() without a preceding store().")
        for s, p in zip(self._stored, params, strict=True):
            p.copy_(s)
        self._stored = None


@dataclass
class ValResult:
    """Validation NELBO (diffusion: an upper bound) or exact NLL (AR), nats per token."""

    nll: float
    ppl: float
    bpd: float
    nll_se: float
    tokens: int
    rows: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict (for JSON)."""
        return asdict(self)


@torch.no_grad()
def evaluate(
    model: DiT,
    rows: Tensor,
    cfg: TrainConfig,
    seed: int,
    batch_size: int | None = None,
    prompt_len: Tensor | None = None,
) -> ValResult:
    """Validation NELBO/PPL over ``rows`` with a dedicated seeded generator (§1.7).

    Sums Σ valid·ℓ and the token counts in float64 over batches; ``nll_se`` is the standard
    error of the per-batch per-token values. The model should hold the EMA weights.

    Args:
        model: the DiT (switched to eval for the call, back afterwards).
        rows: (n, L) validation rows.
        cfg: the run config (objective settings).
        seed: seed of t, masks and π.
        batch_size: rows per forward; default ``cfg.val_batch_size``.
        prompt_len: (n,) prompt lengths of task rows (the conditional NELBO of the answers);
            None for corpus rows.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    objective, ocfg = OBJECTIVES[cfg.family], cfg.objective()
    bs = batch_size or cfg.val_batch_size
    total, count, per_batch = 0.0, 0, []
    for i in range(0, len(rows), bs):
        plen = None if prompt_len is None else prompt_len[i : i + bs]
        terms: LossTerms = objective(model, rows[i : i + bs], gen, ocfg, False, prompt_len=plen)
        total += float(terms.total.double())
        count += terms.count
        per_batch.append(float(terms.total) / terms.count)
    model.train(was_training)
    nll = total / count
    se = float(np.std(per_batch, ddof=1) / math.sqrt(len(per_batch))) if len(per_batch) > 1 else 0.0
    return ValResult(nll, math.exp(nll), nll / math.log(2), se, count, len(rows))


def build_model(cfg: TrainConfig, tok_vocab: int, bos: int, eos: int, mask: int) -> DiT:
    """A fresh DiT for ``cfg`` (reference init: zero head and AdaLN), or ``init_from`` weights.

    Raises:
        FileNotFoundError: ``init_from`` does not exist.
    """
    torch.manual_seed(cfg.seed)
    net_cfg = DiTConfig.from_size(
        cfg.model_size,
        family=cfg.family,
        vocab_size=tok_vocab + 1,
        model_length=cfg.seq_len,
        mask_index=mask,
        bos_index=bos,
        eos_index=eos,
        block_size=cfg.block_size if cfg.family == "bd3lm" else None,
        dropout=cfg.dropout,
        tokenizer=cfg.tokenizer,
    )
    model = DiT(net_cfg)
    if cfg.init_from is not None:
        from harness.model.checkpoints import check_state_dict, load_dlmbench_checkpoint

        src = resolve(cfg.init_from)
        if not src.is_dir():
            raise FileNotFoundError(
                f"'init_from' {str(src)!r} does not exist; run the training that writes it first "
                "(for BD3-LM: the MDLM run, which saves its EMA snapshot there)."
            )
        state = load_dlmbench_checkpoint(src).model.state_dict()
        check_state_dict(model, state, str(src))
        model.load_state_dict(state)
    return model


def round_weights(model: DiT, dtype: str) -> None:
    """Round the parameters through ``dtype`` in place (what the shipped file will hold)."""
    if dtype == "float32":
        return
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(getattr(torch, dtype)).float())


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Task rows of a ``data: tasks|mix`` run: the training pool and the held-out examples."""

    train: EncodedTasks
    val: EncodedTasks
    decode: Any  # ids -> text (TextTokenizer.decode)
    eos: int  # the id that ends an answer


@dataclass
class RunData:
    """Training and validation corpus rows, both (n, L) int64, and the task rows if any."""

    train: np.ndarray
    val: np.ndarray
    tokenizer_vocab: int
    bos: int
    eos: int
    mask: int
    tasks: TaskData | None = None


def load_data(cfg: TrainConfig, suite_fn: SuiteFn | None = None) -> RunData:
    """Tokenised rows of both splits (cached token streams, ``harness.train.corpus``).

    With ``data: tasks|mix`` also the task rows (``harness.train.taskdata``).

    Args:
        cfg: the run config.
        suite_fn: the task suite (default ``harness.tasks.suite.suite``).

    Raises:
        ConfigError: a task row does not fit ``seq_len``, or a (task, level) has no training
            example left after the held-out ones are removed.
    """
    from harness.train.corpus import make_rows, token_stream
    from harness.train.tokenizer import TextTokenizer

    tok = TextTokenizer.from_file(resolve(cfg.tokenizer))
    corpus = resolve(cfg.corpus)
    train = make_rows(token_stream("train", tok, corpus), cfg.seq_len, tok.bos_id)
    val = make_rows(token_stream("validation", tok, corpus), cfg.seq_len, tok.bos_id)
    tasks = None if cfg.data == "corpus" else load_tasks(cfg, tok, suite_fn)
    return RunData(train, val, tok.vocab_size, tok.bos_id, tok.eos_id, tok.mask_id, tasks)


def load_tasks(cfg: TrainConfig, tok: Any, suite_fn: SuiteFn | None = None) -> TaskData:
    """The training pool and held-out examples as rows (``taskdata.split_examples``)."""
    from harness.train.taskdata import default_suite, encode_tasks, split_examples

    train_ex, val_ex = split_examples(
        suite_fn or default_suite(),
        cfg.tasks,
        cfg.task_levels,
        cfg.task_pool_per,
        cfg.task_val_per,
        cfg.seed,
        cfg.val_seed,
    )
    return TaskData(
        encode_tasks(train_ex, tok, cfg.seq_len),
        encode_tasks(val_ex, tok, cfg.seq_len),
        tok.decode,
        tok.eos_id,
    )


def fixed_val_subset(val: np.ndarray, n: int, seed: int) -> Tensor:
    """``n`` validation rows chosen once by ``seed`` (sorted indices), (n, L)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(val), size=min(n, len(val)), replace=False))
    return torch.from_numpy(val[idx])


class LogWriter:
    """Appends rows to ``train_log.csv`` (flushed per row so a running job can be followed)."""

    COLUMNS = (
        "step",
        "lr",
        "train_loss",
        "grad_norm",
        "val_nll",
        "val_ppl",
        "val_nll_se",
        "elapsed_s",
    )

    def __init__(self, path: Path, extra: tuple[str, ...] = ()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.columns = self.COLUMNS + tuple(extra)
        self._f = path.open("w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.columns)
        self._w.writeheader()

    def row(self, **values: Any) -> None:
        """Write one row; missing columns stay empty."""
        self._w.writerow({k: values.get(k, "") for k in self.columns})
        self._f.flush()

    def close(self) -> None:
        """Close the file."""
        self._f.close()


@dataclass
class TrainState:
    """Everything one run mutates: model, optimiser, EMA, generator, data and log."""

    cfg: TrainConfig
    data: RunData
    model: DiT
    params: list[torch.nn.Parameter]
    ema: EMA
    opt: torch.optim.Optimizer
    gen: torch.Generator
    batches: Iterator[tuple[np.ndarray, np.ndarray | None]]
    val_subset: Tensor
    log: LogWriter
    t_start: float

    def elapsed(self) -> float:
        """Seconds since :func:`setup` began."""
        return time.perf_counter() - self.t_start


def task_log_columns(tasks: TaskData | None) -> tuple[str, ...]:
    """Extra ``train_log.csv`` columns of a task run: task NELBO, accuracy, one per cell."""
    if tasks is None:
        return ()
    from harness.train.taskdata import cell

    cells = dict.fromkeys("acc:" + ":".join(cell(ex)) for ex in tasks.val.examples)
    return ("task_val_nll", "task_acc", *cells)


def batch_stream(cfg: TrainConfig, data: RunData) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Endless (rows (b, L), prompt_len (b,) or None) batches for ``cfg.data``."""
    from harness.train.corpus import iterate_batches
    from harness.train.taskdata import mixed_batches, task_rows_per_batch

    if data.tasks is None:
        return ((x, None) for x in iterate_batches(data.train, cfg.batch_size, cfg.seed))
    n_task = cfg.batch_size
    if cfg.data == "mix":
        n_task = task_rows_per_batch(cfg.batch_size, cfg.task_fraction)
    t = data.tasks.train
    return mixed_batches(t.rows, t.prompt_len, data.train, cfg.batch_size, n_task, cfg.seed)


def setup(cfg: TrainConfig, log_path: Path, suite_fn: SuiteFn | None = None) -> TrainState:
    """Load data, build (or load) the model, its EMA, AdamW, the generator and the log."""
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    data = load_data(cfg, suite_fn)
    model = build_model(cfg, data.tokenizer_vocab, data.bos, data.eos, data.mask).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
    return TrainState(
        cfg=cfg,
        data=data,
        model=model,
        params=params,
        ema=EMA(params, cfg.ema),
        opt=opt,
        gen=torch.Generator().manual_seed(cfg.seed),
        batches=batch_stream(cfg, data),
        val_subset=fixed_val_subset(data.val, cfg.val_rows, cfg.val_seed),
        log=LogWriter(log_path, task_log_columns(data.tasks)),
        t_start=t_start,
    )


def train_step(st: TrainState, step: int) -> tuple[float, float]:
    """One optimiser step (§2 step 4): loss, backward, clip, AdamW, EMA. Returns (loss, ‖g‖)."""
    for group in st.opt.param_groups:
        group["lr"] = lr_at(step, st.cfg)
    rows, plen = next(st.batches)
    x = torch.from_numpy(rows)  # (b, L)
    prompt_len = None if plen is None else torch.from_numpy(plen)  # (b,)
    objective = OBJECTIVES[st.cfg.family]
    loss = objective(st.model, x, st.gen, st.cfg.objective(), True, prompt_len=prompt_len).loss
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = float(torch.nn.utils.clip_grad_norm_(st.params, st.cfg.grad_clip))
    st.opt.step()
    st.ema.update(st.params)
    return float(loss.detach()), gnorm


def validate_subset(st: TrainState, done: int) -> ValResult:
    """Validation on the fixed subset (and the held-out tasks) with the EMA weights; logged."""
    res, task = _with_ema(
        st.model,
        st.params,
        st.ema,
        lambda: (
            evaluate(st.model, st.val_subset, st.cfg, st.cfg.val_seed),
            validate_tasks(st.model, st.data.tasks, st.cfg),
        ),
    )
    st.log.row(step=done, val_nll=res.nll, val_ppl=res.ppl, val_nll_se=res.nll_se,
               elapsed_s=st.elapsed(), **task_log_values(task))  # fmt: skip
    return res


def validate_tasks(model: DiT, tasks: TaskData | None, cfg: TrainConfig) -> dict[str, Any] | None:
    """Held-out task NELBO (answers given prompts) and greedy exact-match accuracy.

    Returns:
        None without tasks, else ``{"task_val_nll": ValResult, "accuracy": TaskAccuracy}``.
    """
    if tasks is None:
        return None
    from harness.train.taskeval import task_accuracy

    v = tasks.val
    nll = evaluate(
        model,
        torch.from_numpy(v.rows),
        cfg,
        cfg.val_seed,
        prompt_len=torch.from_numpy(v.prompt_len),
    )
    was_training = model.training
    model.eval()
    acc = task_accuracy(model, v, tasks.decode, tasks.eos, cfg.task_decode)
    model.train(was_training)
    return {"task_val_nll": nll, "accuracy": acc}


def task_log_values(task: dict[str, Any] | None) -> dict[str, float]:
    """The task columns of one ``train_log.csv`` row."""
    if task is None:
        return {}
    acc = task["accuracy"]
    cells = {f"acc:{k}": v for k, v in acc.per_cell.items()}
    return {"task_val_nll": task["task_val_nll"].nll, "task_acc": acc.overall, **cells}


def save_snapshot(st: TrainState, done: int) -> None:
    """Save the EMA weights (fp32) to ``snapshot_dir`` (the MDLM run's BD3-LM initialisation)."""
    from harness.model.checkpoints import save_checkpoint

    target = resolve(str(st.cfg.snapshot_dir))
    extra = {"snapshot_of": st.cfg.name, "step": done, "config_hash": config_hash(st.cfg)}
    _with_ema(st.model, st.params, st.ema, lambda: save_checkpoint(st.model, target, extra=extra))


def train(
    cfg: TrainConfig, command: str = "", overwrite: bool = False, suite_fn: SuiteFn | None = None
) -> dict[str, Any]:
    """Run one training job and write the checkpoint; returns the metrics section.

    Args:
        cfg: the resolved training config.
        command: the command line, recorded in the checkpoint.
        overwrite: replace an existing output (and snapshot) folder that holds a dlmbench
            checkpoint; without it an existing folder is an error. Either way the new
            checkpoint is written to a temp sibling and renamed into place.
        suite_fn: the task suite for ``data: tasks|mix`` (default ``harness.tasks.suite.suite``).

    Raises:
        ConfigError: a bad ``name`` or an output folder that must not be replaced
            (:func:`output_problems`), raised before anything is written.
    """
    from tqdm import tqdm

    check_outputs(cfg, overwrite)
    out = resolve(cfg.out_dir) / cfg.name
    tmp_log = out.parent / f".{cfg.name}.train_log.csv"
    st = setup(cfg, tmp_log, suite_fn)
    running, n_run, last_val = 0.0, 0, None
    bar = tqdm(range(cfg.steps), desc=cfg.name, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for step in bar:
        loss, gnorm = train_step(st, step)
        running, n_run, done = running + loss, n_run + 1, step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            lr = st.opt.param_groups[0]["lr"]
            st.log.row(step=done, lr=lr, train_loss=running / n_run, grad_norm=gnorm,
                       elapsed_s=st.elapsed())  # fmt: skip
            bar.set_postfix(loss=f"{running / n_run:.3f}", val=last_val)
            running, n_run = 0.0, 0
        if cfg.val_every and (done % cfg.val_every == 0 or done == cfg.steps):
            last_val = f"{validate_subset(st, done).nll:.3f}"
        if cfg.snapshot_step == done:
            save_snapshot(st, done)
    bar.close()
    return finish(st, out, command, train_s=st.elapsed(), log_file=tmp_log)


def finish(
    st: TrainState, out: Path, command: str, train_s: float, log_file: Path | None = None
) -> dict[str, Any]:
    """Ship the EMA weights: round to ``save_dtype``, final validation, save; return metrics.

    ``log_file`` (the closed ``train_log.csv``) moves into the checkpoint before it is renamed
    into place, so the output folder appears whole or not at all.
    """
    from harness.model.checkpoints import save_checkpoint

    cfg = st.cfg
    st.ema.copy_to(st.params)  # from here on the model holds the shipped (EMA) weights
    round_weights(st.model, cfg.save_dtype)
    final, task = None, None
    if cfg.final_validation:
        final = evaluate(st.model, torch.from_numpy(st.data.val), cfg, cfg.val_seed)
        task = validate_tasks(st.model, st.data.tasks, cfg)
        st.log.row(step=cfg.steps, val_nll=final.nll, val_ppl=final.ppl,
                   val_nll_se=final.nll_se, elapsed_s=st.elapsed(),
                   **task_log_values(task))  # fmt: skip
    st.log.close()
    metrics = {
        "final_validation": final.as_dict() if final else None,
        "val_nll": final.nll if final else None,
        "val_ppl": final.ppl if final else None,
        "val_bpd": final.bpd if final else None,
        "val_scope": "whole held-out split, positions 1..L-1, EMA weights as shipped",
        "steps": cfg.steps,
        "train_wall_s": train_s,
        "wall_s": st.elapsed(),
        "parameters": st.model.num_parameters(),
    }
    if task is not None:
        metrics["task_val_nll"] = task["task_val_nll"].nll
        metrics["task_accuracy"] = task["accuracy"].summary()
        metrics["task_scope"] = (
            "held-out task examples (ids and prompts never trained on), EMA weights as shipped; "
            f"greedy one token per call, {cfg.task_decode} (AR: left to right); exact match"
        )
    extra = {
        "training": {"config": to_dict(cfg), "config_hash": config_hash(cfg), "command": command},
        "metrics": metrics,
        "tokenizer": cfg.tokenizer,
    }
    files = {"train_log.csv": log_file} if log_file is not None else None
    save_checkpoint(st.model, out, extra=extra, dtype=getattr(torch, cfg.save_dtype), files=files)
    return metrics


def _with_ema(model: DiT, params: list[torch.nn.Parameter], ema: EMA, fn: Any) -> Any:
    """Run ``fn`` with the EMA weights swapped in (store, copy, run, restore)."""
    ema.store(params)
    ema.copy_to(params)
    try:
        return fn()
    finally:
        ema.restore(params)
        model.train()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train CONFIG [a=value ...]`` on a ``dlmbench`` sub-command parser."""
    p = subparsers.add_parser(
        "train",
        help="train a small checkpoint (MDLM, BD3-LM, Eso-LM, AR) on the offline corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="training YAML, e.g. configs/train/mdlm.yaml")
    p.add_argument("overrides", nargs="*", help="field=value overrides, e.g. steps=200")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output folder (a dlmbench checkpoint) instead of refusing",
    )
    p.set_defaults(fn=_cmd_train)
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    overwrite = bool(getattr(args, "overwrite", False))
    try:
        cfg = load_config(args.config, args.overrides)
        check_outputs(cfg, overwrite)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    flags = ["--overwrite"] if overwrite else []
    command = " ".join(
        shlex.quote(a)
        for a in ["python", "-m", "harness.train", args.config, *args.overrides, *flags]
    )
    metrics = train(cfg, command, overwrite=overwrite)
    keys = ("val_nll", "val_ppl", "steps", "wall_s", "task_val_nll")
    summary = {k: metrics[k] for k in keys if k in metrics}
    if "task_accuracy" in metrics:
        summary["task_acc"] = metrics["task_accuracy"]["overall"]
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.train CONFIG [a=value ...] [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="python -m harness.train")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return int(_cmd_train(parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])))


if __name__ == "__main__":
    sys.exit(main())
