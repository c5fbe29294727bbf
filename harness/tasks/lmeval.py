"""lm-evaluation-harness tasks as dlmbench examples (the optional ``dlmbench[tasks]`` extra).

The bridge runs one way: **lm-eval tasks → dlmbench tasks**. lm-eval supplies the documents,
the prompts (its own templates, few-shot context included), the references and, optionally,
its own metric; dlmbench keeps the generation loop and the timer, so every timed region is
dlmbench's (warm-up per shape, device sync, repeats) and nothing of lm-eval's — request
batching, caching, its model wrappers' padding and stopping — runs inside it. The other
direction (dlmbench samplers as an lm-eval ``LM``) would hand the loop to lm-eval, whose calls
interleave tokenisation, stop-string checks and Python bookkeeping with the network calls, and
would time those too. ``docs/tasks.md`` has the details.

Only ``generate_until`` tasks can be used (dlmbench generates answers; it does not score
log-likelihoods). lm-eval is imported only when a function here runs; without it the error
says how to install it. Nothing is downloaded unless ``offline=False``: with the default the
Hugging Face libraries are told ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` while the task
loads, so a task whose dataset is not local fails instead of fetching it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlmcore.errors import UserError, short_repr
from dlmcore.registry import did_you_mean
from harness.tasks.suite import Example, TaskSpec, register_user_task

LMEVAL_VERSION = "0.4.13"
"""The lm-eval release the bridge is tested with (``pip install 'dlmbench[tasks]'``)."""

NORMALISATION = "strip"
"""dlmbench's default scoring of lm-eval examples (generations usually start with a space)."""

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class LmEvalError(UserError, ValueError):
    """lm-eval is missing, or a task that cannot be used (unknown, not generate_until, empty)."""


def _import_lm_eval() -> Any:
    try:
        import lm_eval.tasks
    except ImportError as e:
        raise LmEvalError(
            f"the lm-eval bridge needs lm-evaluation-harness ({e}); install it with "
            f"`pip install 'dlmbench[tasks]'` (lm-eval=={LMEVAL_VERSION})."
        ) from None
    return lm_eval.tasks


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Tell the Hugging Face libraries not to reach the network, then restore what was set."""
    if not enabled:
        yield
        return
    old_env = {k: os.environ.get(k) for k in OFFLINE_VARIABLES}
    os.environ.update({k: "1" for k in OFFLINE_VARIABLES})
    cfg = sys.modules.get("datasets.config")  # read at import: patch it if already imported
    old_cfg = {k: getattr(cfg, k) for k in OFFLINE_VARIABLES if hasattr(cfg, k)} if cfg else {}
    for k in old_cfg:
        setattr(cfg, k, True)
    try:
        yield
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for k, v in old_cfg.items():
            setattr(cfg, k, v)


@dataclass(frozen=True)
class LmEvalTask:
    """One lm-eval ``generate_until`` task, as dlmbench examples plus lm-eval's own scoring.

    Attributes:
        name: the lm-eval task name.
        examples: one per document, in lm-eval's order (``limit`` applied).
        until: the task's stop strings (cut predictions with
            ``scoring.predict_answer(text, stops=task.until)``).
        max_gen_toks: lm-eval's generation budget in tokens (None: not set).
        task: the lm-eval ``Task`` object with its request instances.
    """

    name: str
    examples: tuple[Example, ...]
    until: tuple[str, ...]
    max_gen_toks: int | None
    task: Any = field(repr=False, compare=False)

    def metrics(self, predictions: Sequence[str]) -> dict[str, dict[str, float]]:
        """lm-eval's own metrics of ``predictions`` (one per example, in order).

        Runs the task's filter pipelines and ``process_results`` exactly as lm-eval's
        evaluator does, then its aggregations.

        Returns:
            ``{filter name: {metric: value}}``, e.g. ``{"none": {"exact_match": 0.5}}``.

        Raises:
            LmEvalError: not one prediction per example.
        """
        instances = list(self.task.instances)
        if len(predictions) != len(instances):
            raise LmEvalError(
                f"task '{self.name}' has {len(instances)} examples; got {len(predictions)} "
                "predictions. Pass one per example, in order."
            )
        for inst, pred in zip(instances, predictions):
            inst.resps = [pred]
            inst.filtered_resps = {}
        self.task.apply_filters()
        aggregate = self.task.aggregation()
        out: dict[str, dict[str, float]] = {}
        for key in instances[0].filtered_resps:
            per_metric: dict[str, list[Any]] = {}
            for inst in instances:
                for metric, value in self.task.process_results(
                    inst.doc, [inst.filtered_resps[key]]
                ).items():
                    per_metric.setdefault(metric, []).append(value)
            out[key] = {m: float(aggregate[m](v)) for m, v in per_metric.items()}
        return out


def _reference(task: Any, doc: dict) -> str:
    """The reference answer of ``doc``: the target text.

    A choice index gives that choice; a list of references gives the first (lm-eval's own
    metric, :meth:`LmEvalTask.metrics`, sees them all).
    """
    target = task.doc_to_target(doc)
    if isinstance(target, int) and task.config.doc_to_choice is not None:
        target = task.doc_to_choice(doc)[target]
    if isinstance(target, list):
        target = target[0] if target else ""
    return str(target)


def _one_task(tasks: Any, name: str, include_path: Any, include_defaults: bool) -> Any:
    """Build task ``name`` with a TaskManager over the given paths."""
    manager = tasks.TaskManager(include_path=include_path, include_defaults=include_defaults)
    if name not in manager.all_tasks:
        where = f"under {include_path}" if include_path else "among lm-eval's built-in tasks"
        if include_path and not include_defaults:
            where += " (built-in tasks not searched: include_defaults=False)"
        raise LmEvalError(
            f"no lm-eval task '{name}' {where}.{did_you_mean(name, manager.all_tasks)} "
            "Check the name in the task's YAML (`task:`) and the include path."
        )
    loaded = manager.load([name])["tasks"]
    if len(loaded) != 1:
        raise LmEvalError(
            f"'{name}' is an lm-eval group or tag of {len(loaded)} tasks; load one task at a "
            f"time: {', '.join(sorted(loaded))}."
        )
    return next(iter(loaded.values()))


def open_task(
    name: str,
    include_path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    *,
    include_defaults: bool | None = None,
    offline: bool = True,
) -> LmEvalTask:
    """Load the lm-eval ``generate_until`` task ``name`` as dlmbench examples.

    Args:
        name: the task's name (its YAML's ``task:``).
        include_path: a folder of custom task YAMLs (lm-eval's ``--include_path``).
        limit: at most this many documents (lm-eval's ``--limit``).
        include_defaults: also index lm-eval's built-in tasks (about 10 s); default: only when
            no ``include_path`` is given.
        offline: forbid downloads while loading (see the module docstring).

    Raises:
        LmEvalError: lm-eval missing, unknown task, a group, not ``generate_until``, no docs.
        FileNotFoundError: ``include_path`` does not exist.
    """
    if include_path is not None and not Path(include_path).exists():
        raise FileNotFoundError(
            f"lm-eval include path '{include_path}' does not exist; give the folder holding "
            "the task YAML."
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise LmEvalError(f"limit must be a positive integer or None; got {short_repr(limit)}.")
    defaults = include_path is None if include_defaults is None else include_defaults
    with _offline(offline):
        tasks = _import_lm_eval()
        include = str(include_path) if include_path is not None else None
        task = _one_task(tasks, name, include, defaults)
        kind = task.config.output_type
        if kind != "generate_until":
            raise LmEvalError(
                f"lm-eval task '{name}' is a {kind} task; dlmbench generates answers and "
                "scores them, so only generate_until tasks can be used."
            )
        task.build_all_requests(limit=limit, rank=0, world_size=1)
    return _as_examples(name, task)


def _as_examples(name: str, task: Any) -> LmEvalTask:
    """Examples from the task's request instances (context = prompt), and its spec."""
    examples = []
    for inst in task.instances:
        prompt, answer = inst.args[0], _reference(task, inst.doc)
        examples.append(Example(f"lmeval:{name}", 0, prompt, answer, f"{name}/{inst.doc_id}"))
    gen = dict(task.config.generation_kwargs or {})
    until = gen.get("until", [])
    until = (until,) if isinstance(until, str) else tuple(until)
    longest = max(len(e.answer) for e in examples)
    register_user_task(
        TaskSpec(
            f"lmeval:{name}", f"lm-eval task {name}", (), NORMALISATION, None, lambda _: longest
        )
    )
    return LmEvalTask(name, tuple(examples), until, gen.get("max_gen_toks"), task)


def load_task(
    name: str, include_path: str | os.PathLike[str] | None = None, limit: int | None = None
) -> list[Example]:
    """The examples of lm-eval task ``name`` (:func:`open_task`'s, as a list)."""
    return list(open_task(name, include_path, limit).examples)
