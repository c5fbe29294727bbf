"""The runner: cells → timed measurements → one results row per cell, resumable.

For each cell (``harness.run.experiment.Cell``) the runner

1. resolves the model (one resident at a time, reused across consecutive cells);
2. builds the sampler from its registry name and config, checks the family;
3. resets the memory peaks, seeds a generator on the device, and calls ``plan`` (untimed);
4. warms up by replaying ``execute(plan)`` W times (the first one under a non-finite-logits
   guard), then times R repeats, re-setting the generator to its post-plan state before each
   one, so every repeat replays exactly ``sample(seed)``;
5. writes a row (``harness.results``): timings, work counters, cost model, memory, energy.

A cell that raises is recorded (``status`` ``error`` or ``oom``, ``error`` = ``"Type: message"``)
and the sweep goes on; after an out-of-memory at batch B (CUDA or CPU), larger batches of the
same (sampler, params, L, model) are recorded as ``skipped``, and so is a cell whose estimated
peak memory exceeds the available memory. A row that cannot be stored becomes the cell's
``error`` row (:func:`store_row`). Re-running the same config skips every
cell whose shard exists.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dlmcore.configio import to_dict
from harness import results
from harness.measure import contention, costmodel, energy, envinfo, memory
from harness.model import modelspec
from harness.model.hf import cost as hf_cost
from harness.model.hf.config import HFModelConfig
from harness.run import agreement, taskcell, timing
from harness.run.experiment import Cell, Experiment, run_id_for
from harness.run.experiment import stable_hash as _hash
from samplers.base import SAMPLERS, SampleResult, check_family

DTYPES = {"float32": (torch.float32, 4), "bfloat16": (torch.bfloat16, 2)}


class NonFiniteLogitsError(RuntimeError):
    """A network call returned NaN or infinite logits."""


class InvalidSampleError(RuntimeError):
    """A full-mode sample has the wrong shape, ids outside the vocabulary, or masks left."""


@dataclass
class RunContext:
    """State shared by the cells of one run.

    Attributes:
        run_dir: the run folder.
        run_id: its name.
        env_id: hash of this session's environment fingerprint.
        peaks: device peaks for the cost model (``None`` if they could not be measured).
        oom: group_id → smallest batch that ran out of memory.
        models: the resident model.
    """

    run_dir: Path
    run_id: str
    env_id: str
    peaks: costmodel.Peaks | None
    oom: dict[str, int] = field(default_factory=dict)
    models: ModelCache = field(default_factory=lambda: ModelCache())


class ModelCache:
    """Keeps one model resident, so each cell's memory peak holds its own model only."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.model: Any = None
        self.provenance: dict[str, Any] = {}

    def get(self, cell: Cell) -> tuple[Any, dict[str, Any]]:
        """The model of ``cell``, loading it (and dropping the previous one) when it changes."""
        key = _model_key(cell)
        if key != self.key:
            self.key, self.model, self.provenance = None, None, {}
            _free_memory()
            self.model, self.provenance = modelspec.load_model(
                cell.ckpt.path, cell.model_cfg, cell.ckpt.init_seed, cell.device
            )
            self.key = key
        return self.model, self.provenance


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# One cell
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def numerics(cell: Cell) -> Iterator[None]:
    """Inference mode, plus bfloat16 autocast when ``cell.dtype`` asks for it."""
    with torch.inference_mode():
        if cell.dtype == "bfloat16":
            with torch.autocast(device_type=cell.device.split(":")[0], dtype=torch.bfloat16):
                yield
        else:
            yield


@contextlib.contextmanager
def nonfinite_guard(model: Any) -> Iterator[None]:
    """Raise :class:`NonFiniteLogitsError` on any call whose logits hold NaN or ±inf.

    Hooks the output head (every call path goes through it), so it costs one reduction and one
    host sync per call; it is used on the first warm-up only, never in a timed repeat.
    """
    head = getattr(model, "output_layer", model)
    calls = [0]

    def hook(_mod: Any, _inp: Any, out: torch.Tensor) -> None:
        calls[0] += 1
        bad = (~torch.isfinite(out)).sum().item()
        if bad:
            raise NonFiniteLogitsError(
                f"network call {calls[0]} of the first warm-up returned {bad} non-finite logits "
                f"of {out.numel()} (shape {tuple(out.shape)}, dtype {out.dtype}). Check the "
                "checkpoint's weights for NaN/inf, or run in float32 (bfloat16 can overflow)."
            )

    handle = head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def check_sample(result: SampleResult, cell: Cell) -> None:
    """Full-mode tokens must be ``(b, L)`` integer ids in ``[0, V)`` with no mask left.

    Raises:
        InvalidSampleError: naming the first violated rule.
    """
    tok, cfg = result.tokens, cell.model_cfg
    want = (cell.batch_size, cell.seq_len)
    problem = None
    if tuple(tok.shape) != want or tok.is_floating_point():
        problem = (
            f"tokens have shape {tuple(tok.shape)} and dtype {tok.dtype}; expected {want} ints"
        )
    elif tok.numel() and (int(tok.min()) < 0 or int(tok.max()) >= cfg.vocab_size):
        problem = (
            f"token ids span [{int(tok.min())}, {int(tok.max())}], outside [0, {cfg.vocab_size})"
        )
    elif cfg.mask_id is not None and bool((tok == cfg.mask_id).any()):  # None: no mask token
        problem = f"{int((tok == cfg.mask_id).sum())} mask tokens (id {cfg.mask_id}) are left"
    if problem:
        raise InvalidSampleError(
            f"sampler '{cell.sampler}' at seed {cell.seed}: {problem}. A full-mode sample must be "
            "complete; fix the sampler (or use timing.mode: profile for network-only timing)."
        )


def time_cell(cell: Cell, model: Any) -> tuple[timing.Measurement, SampleResult]:
    """Plan (untimed), warm up, and time ``execute`` for one cell; return the raw measurement."""
    sampler = SAMPLERS.build(cell.sampler, cell.config)
    check_family(sampler, model, cell.checkpoint)
    gen = torch.Generator(device=cell.device)
    gen.manual_seed(cell.seed)
    with numerics(cell):
        plan = sampler.plan(model, batch_size=cell.batch_size, seq_len=cell.seq_len, generator=gen)
        state = gen.get_state()
        meas = timing.measure(
            lambda: sampler.execute(model, plan, generator=gen),
            device=cell.device,
            repeats=cell.timing.repeats,
            warmup=cell.timing.warmup,
            reset=lambda: gen.set_state(state),
            min_time_s=cell.timing.min_time_s,
            max_repeats=cell.timing.max_repeats,
            meter=timing.MeterGroup(
                energy.EnergyMeter(cell.device), contention.ContentionMeter(cell.device)
            ),
            on_first_warmup=lambda: nonfinite_guard(model),
        )
    return meas, meas.first


def measure_cell(cell: Cell, ctx: RunContext) -> dict[str, Any]:
    """Run one cell and return its full ``ok`` row (exceptions propagate to :func:`run_cell`)."""
    if cell.task is not None:
        return measure_task_cell(cell, ctx)
    model, prov = ctx.models.get(cell)
    memory.reset_peaks(cell.device)
    meas, result = time_cell(cell, model)
    if cell.timing.mode == "full":
        check_sample(result, cell)
    row = identity_columns(cell, ctx, "ok", None, prov)
    row.update(timing_columns(cell, meas))
    row.update(work_columns(cell, result, row["wall_s"], ctx.peaks, model))
    row.update(memory.read_peaks(cell.device))
    row["cache_bytes_analytic"] = _cache_bytes(cell)
    row.update(energy_columns(cell, meas))
    row.update(contention_columns(cell, meas, row))
    row["content_tokens_mean"] = _content_tokens(cell, result)
    row.update(agreement_columns(cell, model))
    if cell.timing.mode == "full" and cell.timing.save_samples:
        row["samples_file"] = results.save_samples(ctx.run_dir, cell.cell_id, result.tokens)
    return row


def agreement_columns(cell: Cell, model: Any) -> dict[str, Any]:
    """``agree_*`` of a full-mode cell whose sampler has an approximate cache (else none).

    Untimed, after the timing: the approximate config and its ``cache: none`` twin from the
    cell's seed (``harness.run.agreement``).
    """
    if cell.timing.mode != "full" or not agreement.is_approximate(cell.config):
        return {}
    with numerics(cell):
        rep = agreement.compare(
            cell.sampler,
            cell.config,
            model,
            batch_size=cell.batch_size,
            seq_len=cell.seq_len,
            seed=cell.seed,
            device=cell.device,
        )
    return rep.columns()


def time_task_cell(
    cell: Cell, model: Any, batches: list[taskcell.PromptBatch]
) -> timing.Measurement:
    """Plan every prompt batch (untimed), then time one pass that executes them all.

    Warm-up passes and repeats replay the same plans from the same generator state, so each
    repeat answers the whole task exactly as the first did; ``meas.first`` is the list of
    :class:`SampleResult`, one per batch.
    """
    sampler = SAMPLERS.build(cell.sampler, cell.config)
    check_family(sampler, model, cell.checkpoint)
    gen = torch.Generator(device=cell.device)
    gen.manual_seed(cell.seed)
    with numerics(cell):
        plans = [
            sampler.plan(
                model,
                batch_size=b.size,
                seq_len=b.prompt_len + b.gen_len,
                generator=gen,
                prompt=b.prompt.to(cell.device),
            )
            for b in batches
        ]
        state = gen.get_state()
        return timing.measure(
            lambda: [sampler.execute(model, plan, generator=gen) for plan in plans],
            device=cell.device,
            repeats=cell.timing.repeats,
            warmup=cell.timing.warmup,
            reset=lambda: gen.set_state(state),
            min_time_s=cell.timing.min_time_s,
            max_repeats=cell.timing.max_repeats,
            meter=timing.MeterGroup(
                energy.EnergyMeter(cell.device), contention.ContentionMeter(cell.device)
            ),
            on_first_warmup=lambda: nonfinite_guard(model),
        )


def measure_task_cell(cell: Cell, ctx: RunContext) -> dict[str, Any]:
    """A task cell's ``ok`` row: timed answers to every prompt, scored by exact match.

    Timing columns cover one pass over the task (all batches); ``s_per_sample`` is per
    example and ``tokens_per_s`` counts generated tokens only (prompts excluded).
    """
    model, prov = ctx.models.get(cell)
    tokenizer = taskcell.load_tokenizer(cell)
    batches = taskcell.prompt_batches(
        taskcell.load_examples(cell),
        tokenizer,
        cell.batch_size,
        gen=cell.seq_len,
        block=taskcell.block_size(cell),
    )
    problems = taskcell.canvas_problems(batches, cell)
    if problems:
        raise taskcell.TaskCellError("; ".join(problems))
    memory.reset_peaks(cell.device)
    meas = time_task_cell(cell, model, batches)
    answers: list[SampleResult] = meas.first
    if cell.timing.mode == "full":
        for batch, res in zip(batches, answers, strict=True):
            bad = taskcell.check_answers(batch, res, cell)
            if bad:
                raise InvalidSampleError(
                    f"sampler '{cell.sampler}', prompt length {batch.prompt_len}: {bad}."
                )
    row = identity_columns(cell, ctx, "ok", None, prov)
    row.update(timing_columns(cell, meas))
    par = taskcell.parallelism_columns(batches, answers, row["wall_s"], cell)
    row.update(
        s_per_sample=par["s_per_example"],
        tokens_per_s=par["gen_tokens_per_s"],
        samples_per_s=1.0 / par["s_per_example"],
    )
    row.update(task_work_columns(cell, batches, answers, row["wall_s"], ctx.peaks, model))
    row.update(par)
    row.update(memory.read_peaks(cell.device))
    row.update(energy_columns(cell, meas))
    row.update(contention_columns(cell, meas, row))
    if cell.timing.mode == "full":
        cols, records = taskcell.score_batches(batches, answers, tokenizer, cell)
        row.update(cols)
        row["answers_file"] = taskcell.write_answers(ctx.run_dir, cell.cell_id, records)
        row.update(task_agreement_columns(cell, model, batches, answers, tokenizer))
    return row


def task_agreement_columns(
    cell: Cell,
    model: Any,
    batches: list[taskcell.PromptBatch],
    answers: list[SampleResult],
    tokenizer: Any,
) -> dict[str, Any]:
    """``agree_*`` of a full-mode task cell with an approximate cache (else none).

    Untimed, after scoring: the pass over ``batches`` replayed from the cell's seed with the
    approximate config and its ``cache: none`` twin (:func:`agreement.compare_pass`), pooled
    over every prompt; ``agree_accuracy_delta`` = accuracy of the approximate answers − accuracy
    of the exact ones, both scored as the cell's ``accuracy``. A replay whose answers differ
    from the scored ones (nondeterministic execution) is warned about.
    """
    if cell.timing.mode != "full" or not agreement.is_approximate(cell.config):
        return {}
    with numerics(cell):
        rep, replay = agreement.compare_pass(
            cell.sampler,
            cell.config,
            model,
            batches=agreement_batches(batches, cell.device),
            seed=cell.seed,
            device=cell.device,
            scorer=lambda tokens: taskcell.accuracy(batches, tokens, tokenizer),
        )
    if not all(torch.equal(a.tokens, r) for a, r in zip(answers, replay, strict=True)):
        results.warn(
            f"{cell.label}: the agreement replay of cache {cell.config.cache!r} did not "
            "reproduce the scored answers (nondeterministic execution); its agree_* columns "
            "describe the replay."
        )
    return {**rep.columns(), "agree_accuracy_delta": rep.quality_delta}


def agreement_batches(batches: list[taskcell.PromptBatch], device: str) -> list[agreement.Batch]:
    """The task pass's sampler calls, in the order :func:`time_task_cell` runs them.

    Each is (b, P + G′, the (b, P) prompt on ``device``).
    """
    return [agreement.Batch(b.size, b.prompt_len + b.gen_len, b.prompt.to(device)) for b in batches]


def task_work_columns(
    cell: Cell,
    batches: list[taskcell.PromptBatch],
    answers: list[SampleResult],
    wall: float,
    peaks: costmodel.Peaks | None,
    model: Any,
) -> dict[str, Any]:
    """NFE and token counters per example, and the analytic cost summed over a task pass."""
    sizes = [b.size for b in batches]
    rows = sum(sizes)

    def per_example(values: list[float]) -> float:
        return sum(v * n for v, n in zip(values, sizes, strict=True)) / rows

    out: dict[str, Any] = {
        "nfe_denoise": per_example([r.nfe_denoise for r in answers]),
        "nfe_total": per_example([r.nfe_total for r in answers]),
        "nfe_expected": per_example(
            [float((r.info or {}).get("nfe_expected", math.nan)) for r in answers]
        ),
        "token_forwards": per_example([r.token_forwards for r in answers]),
    }
    priced = [
        analytic_cost(cell, r.calls, b.size, peaks, model)
        for b, r in zip(batches, answers, strict=True)
    ]
    costs = [c for c, _ in priced]
    flops = sum(c["flops_analytic"] for c in costs)
    predicted = sum(p for _, p in priced) if peaks is not None else math.nan
    out.update(hf_labels(cell))
    out.update(
        flops_analytic=flops,
        bytes_analytic=sum(c["bytes_analytic"] for c in costs),
        tflops_effective=flops / wall / 1e12,
        mfu=flops / wall / peaks.flops_per_s if peaks else math.nan,
        predicted_s=predicted,
        predicted_ratio=wall / predicted if predicted and predicted > 0 else math.nan,
        ms_per_call=wall * 1e3 / sum(r.nfe_total for r in answers),
    )
    return out


def run_cell(cell: Cell, ctx: RunContext) -> dict[str, Any]:
    """The row of ``cell``: measured, or failed/skipped with ``status`` and ``error`` set.

    Skipped without running: a larger batch than one of its OOM group that ran out of memory,
    and a cell whose estimated peak memory exceeds what the device has available
    (:func:`memory_problem`), both before the untimed plan.
    """
    smallest_oom = ctx.oom.get(cell.group_id)
    if smallest_oom is not None and cell.batch_size > smallest_oom:
        msg = f"Skipped: batch {cell.batch_size} > batch {smallest_oom}, which ran out of memory"
        return identity_columns(cell, ctx, "skipped", msg)
    too_big = memory_problem(cell, ctx)
    if too_big is not None:
        return identity_columns(cell, ctx, "skipped", too_big)
    busy = contention_problem(cell)
    if busy is not None:
        return identity_columns(cell, ctx, "skipped", busy)
    try:
        return measure_cell(cell, ctx)
    except Exception as e:  # noqa: BLE001 -- a failed cell is recorded, never dropped
        oom = _is_oom(e)
        status, error = ("oom" if oom else "error"), f"{type(e).__name__}: {e}"
    _free_memory()
    if status == "oom":
        ctx.oom[cell.group_id] = min(cell.batch_size, ctx.oom.get(cell.group_id, sys.maxsize))
    return identity_columns(cell, ctx, status, error)


OOM_MESSAGES = ("out of memory", "can't allocate memory", "defaultcpuallocator")
"""Lower-case fragments of the RuntimeError messages of an allocation failure (CUDA, CPU)."""


def _is_oom(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: CUDA OOM, ``MemoryError``, CPU allocator errors."""
    if isinstance(e, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(m in text for m in OOM_MESSAGES)


MEMORY_CHECK_ENV = "DLMBENCH_MEMORY_CHECK"
"""Set to ``0`` to run cells whose estimated peak memory exceeds the available memory."""


def _model_key(cell: Cell) -> tuple:
    return (cell.ckpt.path, cell.ckpt.init_seed, cell.model_cfg, cell.device)


def cell_peak_bytes(cell: Cell, *, weights: bool = True) -> float:
    """Rough upper bound of ``cell``'s peak memory in bytes (:func:`memory.estimate_peak_bytes`).

    The rows fed and the head rows per call are the largest of the sampler's
    ``expected_calls`` (a KV-cached sampler feeds a few rows per call); L where it has none.
    """
    fed = head = None
    sampler = SAMPLERS.get(cell.sampler)(cell.config)
    try:
        calls = sampler.expected_calls(
            cell.model_cfg, batch_size=cell.batch_size, seq_len=cell.seq_len
        )
        fed, head = (max(int(c[i]) for c in calls) for i in (0, 3)) if calls else (None, None)
    except (AttributeError, NotImplementedError, ValueError, TypeError, IndexError):
        pass
    return memory.estimate_peak_bytes(
        cell.model_cfg,
        _cache_kind(cell),
        cell.batch_size,
        cell.seq_len,
        DTYPES[cell.dtype][1],
        weights=weights,
        fed_rows=fed,
        head_rows=head,
    )


def memory_problem(cell: Cell, ctx: RunContext) -> str | None:
    """Why ``cell`` cannot fit in the device's available memory, or None (also when unknown).

    The weights of a model already resident are not counted again (they are in use already).
    ``DLMBENCH_MEMORY_CHECK=0`` turns the check off. Only CPU cells are checked: there an
    allocation past the machine's memory may bring the kernel's OOM killer instead of an error,
    while a CUDA out-of-memory raises, is recorded as ``oom`` and skips the larger batches, so a
    rough estimate must not skip a GPU cell that would have fit.
    """
    if os.environ.get(MEMORY_CHECK_ENV, "1") == "0" or not str(cell.device).startswith("cpu"):
        return None
    available = memory.available_bytes(cell.device)
    if math.isnan(available):
        return None
    need = cell_peak_bytes(cell, weights=ctx.models.key != _model_key(cell))
    if need <= available:
        return None
    return (
        f"Skipped: estimated peak memory {need / memory.GB:.3g} GB (weights + cache + "
        f"activations at b={cell.batch_size}, L={cell.seq_len}) > {available / memory.GB:.3g} GB "
        f"available on {cell.device}; free memory or lower the batch, then rerun with "
        f"--retry-failed ({MEMORY_CHECK_ENV}=0 runs it anyway)"
    )


def contention_problem(cell: Cell, probe: Any = None) -> str | None:
    """Apply ``timing.contention`` before a cell is timed; a reason to skip it, or None.

    ``warn``: nothing here (the row's ``trust`` says what happened). ``wait``: look at the cores
    until they are quiet or ``max_wait_s`` passes, then time the cell either way (a message says
    which). ``refuse``: skip the cell while other processes use more than ``max_other_cores``.
    """
    t = cell.timing
    if t.contention == "warn":
        return None
    probe = probe or contention.probe_others_cores
    wait_s = t.max_wait_s if t.contention == "wait" else 0.0
    quiet, others, waited = contention.wait_until_quiet(t.max_other_cores, wait_s, probe)
    if quiet:
        if waited >= contention.PROBE_S * 1.5:
            results.warn(f"{cell.label}: waited {waited:.0f} s for the cores to quieten.")
        return None
    if t.contention == "wait":
        results.warn(
            f"{cell.label}: other processes still use {others:.2f} cores of ours after "
            f"{waited:.0f} s; timing it anyway (its row will say noisy)."
        )
        return None
    return (
        f"Skipped: other processes used {others:.2f} cores of ours (limit "
        f"{t.max_other_cores}) and timing.contention is refuse; stop them, then rerun with "
        "--retry-failed (or set timing.contention: wait)"
    )


SHARD_WRITE_ERROR = "ShardWriteError"
"""The ``error`` type of a cell whose row could not be stored."""


def store_row(cell: Cell, ctx: RunContext, row: dict[str, Any]) -> dict[str, Any]:
    """Write ``row``'s shard; return the row that was stored (never raises for a cell's row).

    If the row cannot be stored (a value pyarrow cannot hold, a disk error), the cell's
    minimal identity row with ``status`` ``error`` and the reason is stored instead, so the cell
    is recorded and the sweep goes on. If even that fails, a warning names the cell on stderr
    (it stays pending: the next run re-runs it) and the error row is returned unwritten.
    """
    try:
        results.write_shard(ctx.run_dir, row)
        return row
    except Exception as e:  # noqa: BLE001 -- one unstorable row must not end the sweep
        reason = (
            f"{SHARD_WRITE_ERROR}: the row of status {row.get('status')!r} could not be "
            f"stored ({type(e).__name__}: {e}); fix the value or the disk, then rerun with "
            "--retry-failed"
        )
    keep = {
        k: row[k] for k in ("executor", "worker_host", "worker_pid", "worker_devices") if k in row
    }
    fallback = {**identity_columns(cell, ctx, "error", reason), **keep}
    try:
        results.write_shard(ctx.run_dir, fallback)
    except Exception as e:  # noqa: BLE001 -- reported; the cell stays pending
        results.warn(
            f"cell {cell.cell_id} ({cell.label} b={cell.batch_size}): not even its error row "
            f"could be stored ({type(e).__name__}: {e}); it stays pending for the next run."
        )
    return fallback


# --------------------------------------------------------------------------------------------
# Row columns
# --------------------------------------------------------------------------------------------


def _param_value(v: Any) -> Any:
    return v if isinstance(v, bool | int | float | str) or v is None else json.dumps(v)


def identity_columns(
    cell: Cell, ctx: RunContext, status: str, error: str | None, prov: dict | None = None
) -> dict[str, Any]:
    """Who the cell is: run, ids, status, sampler, model, sizes, seed, device, ``p_*`` params."""
    row: dict[str, Any] = {
        "run_id": ctx.run_id,
        "cell_id": cell.cell_id,
        "group_id": cell.group_id,
        "cell_index": cell.index,
        "status": status,
        "error": error,
        "sampler": cell.sampler,
        "label": cell.label,
        "checkpoint": cell.checkpoint,
        "checkpoint_source": cell.ckpt.path,
        "checkpoint_sha256": (prov or {}).get("sha256"),
        "family": cell.model_cfg.family,
        "model_size": modelspec.size_name(cell.model_cfg),
        "vocab_size": cell.model_cfg.vocab_size,
        "batch_size": cell.batch_size,
        "seq_len": cell.seq_len,
        "seed": cell.seed,
        "device": cell.device,
        "dtype": cell.dtype,
        "timing_mode": cell.timing.mode,
        "env_id": ctx.env_id,
        "cell_config": json.dumps(cell.resolved(), sort_keys=True, default=repr),
    }
    row.update({f"p_{k}": _param_value(v) for k, v in cell.params.items()})
    return row


def timing_columns(cell: Cell, meas: timing.Measurement) -> dict[str, Any]:
    """Summary statistics and raw lists of the timed repeats, and the throughputs."""
    row = timing.summarise(meas.wall_s, meas.warmup_s)
    wall, b, L = row["wall_s"], cell.batch_size, cell.seq_len
    dev = [d for d in meas.device_ms if not math.isnan(d)]
    row.update(
        wall_s_all=list(meas.wall_s),
        device_ms=statistics.median(dev) if dev else math.nan,
        device_ms_all=list(meas.device_ms),
        warmup_all_s=list(meas.warmup_s),
        s_per_sample=wall / b,
        tokens_per_s=b * L / wall,
        samples_per_s=b / wall,
        low_repeat=row["repeats"] < 5,
    )
    return row


def work_columns(
    cell: Cell, result: SampleResult, wall: float, peaks: costmodel.Peaks | None, model: Any
) -> dict[str, Any]:
    """NFE and token counters from the sample; FLOPs, bytes and the roofline prediction."""
    info, nfe = result.info or {}, result.nfe_total
    cost, predicted = analytic_cost(cell, result.calls, cell.batch_size, peaks, model)
    flops = cost["flops_analytic"]
    return {
        **hf_labels(cell),
        "nfe_denoise": result.nfe_denoise,
        "nfe_total": nfe,
        "nfe_expected": float(info.get("nfe_expected", math.nan)),
        "nfe_profile_sim": float(info.get("nfe_profile_sim", math.nan)),
        "token_forwards": result.token_forwards,
        "tokens_per_forward": cell.seq_len / nfe if nfe else math.nan,
        # the rows a block attends to (BD3-LM's context_window); NaN where the sampler has none
        "context_rows": float(info.get("context_rows", math.nan)),
        "ms_per_call": wall * 1e3 / nfe if nfe else math.nan,
        **cost,
        "tflops_effective": flops / wall / 1e12,
        "mfu": flops / wall / peaks.flops_per_s if peaks else math.nan,
        "predicted_s": predicted,
        "predicted_ratio": wall / predicted if predicted and predicted > 0 else math.nan,
    }


def analytic_cost(
    cell: Cell, calls: Any, batch_size: int, peaks: costmodel.Peaks | None, model: Any
) -> tuple[dict[str, float], float]:
    """``(sample_cost columns, predicted seconds)`` of one execute with ``calls``.

    DiT models: the cost model's analytic work and prediction (NaN without ``peaks``). ``hf:``
    models: :func:`harness.model.hf.cost.sample_cost` (2 FLOPs per parameter per token-forward
    plus attention; NaN bytes) and no prediction (NaN): the cost model is calibrated on DiTs.
    """
    if isinstance(cell.model_cfg, HFModelConfig):
        return hf_cost.sample_cost(cell.model_cfg, calls, batch_size), math.nan
    dtype_bytes = DTYPES[cell.dtype][1]
    cost = costmodel.sample_cost(cell.model_cfg, calls, batch_size, dtype_bytes)
    if peaks is None:
        return cost, math.nan
    predicted = costmodel.predict_for_run(
        cell.model_cfg, calls, batch_size, peaks, dtype_bytes, model
    )
    return cost, predicted


def hf_labels(cell: Cell) -> dict[str, Any]:
    """For ``hf:`` models: how the FLOPs were counted, and the dtype the weights are held in."""
    if not isinstance(cell.model_cfg, HFModelConfig):
        return {}
    return {
        "flops_method": hf_cost.FLOPS_METHOD,
        "weights_dtype": cell.model_cfg.spec.options.dtype,
    }


def contention_columns(cell: Cell, meas: timing.Measurement, row: dict[str, Any]) -> dict[str, Any]:
    """What the machine did during the timed window, and the ``trust`` verdict of the row."""
    reading = meas.meter or {}
    cols = {k: reading.get(k, math.nan) for k in contention.METER_COLUMNS}
    cols["cpu_governor"] = reading.get("cpu_governor")
    cols.update(contention.trust_verdict({**row, **cols}, cell.timing.trust_thresholds()))
    return cols


def energy_columns(cell: Cell, meas: timing.Measurement) -> dict[str, Any]:
    """Energy per execute, per sample and per token.

    Joules per execute = the window's mean power × the mean timed wall time. The meter's window
    spans every timed repeat and also the (untimed) resets between them, so total / repeats
    would charge those to the sample.
    """
    reading = meas.meter or {}
    total = float(reading.get("energy_j", math.nan))
    power = float(reading.get("power_w_mean", math.nan))
    per_run = power * statistics.fmean(meas.wall_s) if meas.wall_s else math.nan
    return {
        "energy_j": per_run,
        "energy_j_total": total,
        "j_per_sample": per_run / cell.batch_size,
        "j_per_token": per_run / (cell.batch_size * cell.seq_len),
        "energy_method": reading.get("energy_method", "none"),
        "power_w_mean": float(reading.get("power_w_mean", math.nan)),
    }


def _cache_kind(cell: Cell, sampler: Any = None) -> str | None:
    """The cache the cell's sampler keeps (``kv``, ``qkv``, ``px0``), or None."""
    sampler = sampler or SAMPLERS.get(cell.sampler)(cell.config)
    return sampler.cache_kind() if hasattr(sampler, "cache_kind") else None


def _cache_bytes(cell: Cell) -> float:
    """The analytic cache size of the whole batch.

    The sampler names its cache kind and, if it allocates more rows than the canvas
    (``mdlm_blocks`` dual cache: L + B), their number (``cache_rows``).
    """
    sampler = SAMPLERS.get(cell.sampler)(cell.config)
    kind = _cache_kind(cell, sampler)
    if kind is None:
        return 0.0
    rows = getattr(sampler, "cache_rows", lambda n: n)(cell.seq_len)
    return memory.cache_bytes(cell.model_cfg, kind, cell.batch_size, rows, DTYPES[cell.dtype][1])


def _content_tokens(cell: Cell, result: SampleResult) -> float:
    """Mean tokens per sequence up to and including the first EOS (L if none; measurement §5)."""
    eos = cell.model_cfg.eos_index
    if eos is None:
        eos = cell.model_cfg.bos_index
    if cell.timing.mode != "full" or eos is None:
        return math.nan
    hit = result.tokens == eos  # (b, L)
    first = torch.where(hit.any(-1), hit.int().argmax(-1) + 1, torch.tensor(cell.seq_len))
    return float(first.float().mean())


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def prepare_run(
    exp: Experiment, cells: Sequence[Cell], run_id: str | None = None
) -> tuple[RunContext, dict[str, dict]]:
    """Create (or reopen) the run folder; return the context and the finished cells."""
    run_id = run_id or run_id_for(exp, cells)
    run_dir = Path(exp.output_dir) / run_id
    env = envinfo.fingerprint(exp.device)
    env_id = _hash(env, 12)
    results.init_run_dir(run_dir, {"run_id": run_id, **to_dict(exp)}, env, env_id)
    try:
        peaks = costmodel.measure_peaks(exp.device, DTYPES[exp.dtype][0])
    except Exception as e:  # noqa: BLE001 -- the cost columns become NaN, the run goes on
        print(f"warning: device peaks not measured ({type(e).__name__}: {e})", file=sys.stderr)
        peaks = None
    ctx = RunContext(run_dir, run_id, env_id, peaks)
    done = results.finished(run_dir)
    for r in done.values():
        if r["status"] == "oom":
            ctx.oom[r["group_id"]] = min(r["batch_size"], ctx.oom.get(r["group_id"], sys.maxsize))
    return ctx, done


def pending_cells(
    cells: Sequence[Cell], done: dict[str, dict], retry_failed: bool = False
) -> list[Cell]:
    """The cells to run: those without a shard (and, with ``retry_failed``, failed ones)."""
    redo = {"error", "oom", "skipped"} if retry_failed else set()
    return [c for c in cells if c.cell_id not in done or done[c.cell_id]["status"] in redo]


def estimate(
    exp: Experiment, cells: Sequence[Cell], peaks: costmodel.Peaks | None = None
) -> list[dict[str, Any]]:
    """Dry run: the cost model's predicted seconds per cell, from ``expected_calls``.

    Each entry holds the cell's identity, ``predicted_s`` (one execute) and ``total_s``
    (warm-up + repeats, at least ``min_time_s``); NaN where the sampler cannot predict;
    ``peak_mem_gb_est`` (:func:`cell_peak_bytes`) and ``fits``: whether that fits in this
    machine's available memory for the device (None when priced on other hardware or unknown).
    ``peaks``: price the cells on other hardware (e.g. ``Peaks.from_spec("h200", ...)``, the
    roofline model) instead of measuring this machine's device.
    """
    torch_dtype, dtype_bytes = DTYPES[exp.dtype]
    available = math.nan if peaks is not None else memory.available_bytes(exp.device)
    peaks = peaks or costmodel.measure_peaks(exp.device, torch_dtype)
    out = []
    for c in cells:
        sampler = SAMPLERS.build(c.sampler, c.config)
        try:
            if isinstance(c.model_cfg, HFModelConfig):
                raise ValueError("the cost model predicts DiT networks only, not hf: models")
            calls = sampler.expected_calls(c.model_cfg, batch_size=c.batch_size, seq_len=c.seq_len)
            pred = costmodel.predict_seconds(c.model_cfg, calls, c.batch_size, peaks, dtype_bytes)
        except (NotImplementedError, ValueError) as e:
            pred = math.nan
            print(f"warning: no estimate for {c.label}: {e}", file=sys.stderr)
        t = c.timing
        total = pred * (t.warmup + t.repeats)
        if t.min_time_s is not None:
            total = max(total, pred * t.warmup + t.min_time_s)
        ident = {"cell_id": c.cell_id, "label": c.label, "seq_len": c.seq_len}
        out.append(
            {
                **ident,
                "batch_size": c.batch_size,
                "seed": c.seed,
                "params": c.params,
                "predicted_s": pred,
                "total_s": total,
                **memory_fit(c, available),
            }
        )
    return out


def memory_fit(cell: Cell, available: float) -> dict[str, Any]:
    """``peak_mem_gb_est`` (:func:`cell_peak_bytes`) and ``fits`` (None where unknown)."""
    need = cell_peak_bytes(cell)
    fits = None if math.isnan(available) else bool(need <= available)
    return {"peak_mem_gb_est": need / memory.GB, "fits": fits}
