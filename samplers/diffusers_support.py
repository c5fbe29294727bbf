"""diffusers' dLLM schedulers and pipelines as named, validated objects (optional extra).

diffusers (``pip install 'dlmbench[hf]'``; tested with 0.42) ships the schedulers that the
field's Hugging Face diffusion LMs sample with:

* ``BlockRefinementScheduler`` (mask corruption, LLaDA2; or uniform, DiffusionGemma): commit
  the most confident positions of a block, an even quota per step, plus every one above
  ``threshold``; optional editing of committed tokens.
* ``EntropyBoundScheduler`` (uniform): accept the lowest-entropy positions whose summed entropy
  (minus the largest) stays within ``entropy_bound``; renoise the rest (Ben-Hamu et al. 2025,
  arXiv 2505.24857).
* ``DiscreteDDIMScheduler`` (uniform): an ancestral step from the exact posterior of the
  uniform kernel on a linear grid; optional Gibbs corrector sweeps.

and two pipelines that run their whole generation loop: ``LLaDA2Pipeline`` (mask-based block
refinement) and ``DiffusionGemmaPipeline`` (encoder cache + uniform-corruption canvas).

This module only names and validates them; diffusers is imported when one is built, so the
core install and ``import samplers`` never need it. ``samplers/diffusers_blocks.py`` runs a
scheduler inside dlmbench's own block loop against the denoiser protocol;
``samplers/diffusers_pipeline.py`` times a pipeline as a black box.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from dlmcore.errors import short_repr
from dlmcore.registry import did_you_mean
from samplers.base import CallRecord, SamplerError

SCHEDULERS: dict[str, tuple[str, ...]] = {
    "BlockRefinementScheduler": ("mask", "uniform"),
    "EntropyBoundScheduler": ("uniform",),
    "DiscreteDDIMScheduler": ("uniform",),
}
"""diffusers dLLM scheduler class → the corruptions it serves (``mask``: a mask token;
``uniform``: no mask token, uncommitted positions hold random tokens)."""

PIPELINES: dict[str, str] = {"LLaDA2Pipeline": "mask", "DiffusionGemmaPipeline": "uniform"}
"""diffusers dLLM pipeline class → the corruption of the models it drives."""

CORRUPTION_OF_FAMILY: dict[str, str] = {"mdlm": "mask", "uniform_block": "uniform"}
"""Model family → its corruption process (``uniform_block``: DiffusionGemma, no mask token)."""

FAMILY_OF_CORRUPTION: dict[str, str] = {v: k for k, v in CORRUPTION_OF_FAMILY.items()}
"""The inverse: corruption → model family."""

TESTED_VERSION = "0.42.0"
"""The diffusers release these samplers were written and tested against."""

INSTALL_HINT = (
    "install the optional extra: pip install 'dlmbench[hf]' (diffusers " + TESTED_VERSION + ")"
)


def import_diffusers() -> Any:
    """The ``diffusers`` module.

    Raises:
        SamplerError: diffusers is not installed (the message says how to install it).
    """
    try:
        import diffusers
    except ImportError as e:
        raise SamplerError(
            f"the diffusers samplers need the diffusers package, which is not importable ({e}); "
            f"{INSTALL_HINT}."
        ) from None
    return diffusers


def name_problems(kind: str, name: Any, table: Mapping[str, Any]) -> list[str]:
    """``'scheduler'`` / ``'pipeline'`` is one of ``table`` (did-you-mean otherwise)."""
    if isinstance(name, str) and name in table:
        return []
    hint = did_you_mean(name, list(table)) if isinstance(name, str) else ""
    return [f"'{kind}' is {short_repr(name)}; allowed: {', '.join(table)}.{hint}"]


def init_parameters(cls: type) -> list[str]:
    """Keyword parameters of ``cls.__init__`` (its diffusers config fields)."""
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p != "self" and params[p].kind is not params[p].VAR_KEYWORD]


def args_problems(
    kind: str, cls_name: str, args: Mapping[str, Any], allowed: list[str]
) -> list[str]:
    """Every key of ``args`` that ``allowed`` lacks, with did-you-mean and the allowed list."""
    if not isinstance(args, Mapping):
        return [f"'{kind}' is {short_repr(args)}; it must be a mapping of {cls_name} arguments."]
    return [
        f"'{kind}' has {short_repr(key)}, which {cls_name} does not take."
        f"{did_you_mean(str(key), allowed)} Allowed: {', '.join(allowed) or 'none'}."
        for key in args
        if key not in allowed
    ]


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class ``name`` (diffusers imported here)."""
    return getattr(import_diffusers(), name)


def scheduler_problems(
    name: Any, args: Mapping[str, Any], corruption: str | None = None
) -> list[str]:
    """Problems of a scheduler choice: unknown name, unknown arguments, wrong corruption.

    Without diffusers installed, the name is still checked and the missing package is named.

    Args:
        name: a :data:`SCHEDULERS` key.
        args: keyword arguments for its constructor (``scheduler_args`` in YAML).
        corruption: ``mask`` or ``uniform`` when the model is known; None skips the check.
    """
    out = name_problems("scheduler", name, SCHEDULERS)
    if out:
        return out
    if corruption is not None and corruption not in SCHEDULERS[name]:
        out.append(
            f"'scheduler' {name} serves {' and '.join(SCHEDULERS[name])} corruption; this model "
            f"uses {corruption} corruption. Pick one of "
            f"{', '.join(k for k, v in SCHEDULERS.items() if corruption in v)}."
        )
    try:
        cls = scheduler_class(name)
    except SamplerError as e:
        return out + [str(e)]
    return out + args_problems("scheduler_args", name, args, init_parameters(cls))


def build_scheduler(name: str, args: Mapping[str, Any]) -> Any:
    """A fresh scheduler instance ``name(**args)``.

    Raises:
        SamplerError: diffusers is missing, or the constructor refused the arguments.
    """
    cls = scheduler_class(name)
    try:
        return cls(**dict(args))
    except (TypeError, ValueError) as e:
        raise SamplerError(f"{name}({short_repr(dict(args))}) failed: {e}") from None


def accepted_kwargs(fn: Any, candidates: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``candidates`` that ``fn`` takes as keywords.

    This is how the pipelines call ``scheduler.step``, so that one loop drives every scheduler.
    """
    params = inspect.signature(fn).parameters
    return {k: v for k, v in candidates.items() if k in params}


def takes_keyword(fn: Any, name: str) -> bool:
    """Whether ``fn`` names ``name`` among its parameters (``**kwargs`` does not count)."""
    return name in inspect.signature(fn).parameters


# --------------------------------------------------------------------------------------------
# The calls of the two pipeline loops (for ``expected_calls``)
# --------------------------------------------------------------------------------------------


def window_calls(
    prompt_len: int, seq_len: int, block: int, steps: int, head: int | None = None
) -> list[CallRecord]:
    """LLaDA2's loop: ``steps`` calls on each block, each over the window [0, end of block).

    Blocks run from the one holding the prompt's end to ⌈L / B⌉.

    Args:
        prompt_len: P.
        seq_len: L = P + G.
        block: B, blocks counted from position 0.
        steps: calls per block.
        head: rows given the head per call; None: the whole window (a model that computes
            every row's logits, as LLaDA2Pipeline's does).
    """
    calls: list[CallRecord] = []
    for j in range(prompt_len // block, -(-seq_len // block)):
        W = (j + 1) * block
        calls += [(W, W, W, W if head is None else head)] * steps
    return calls


def canvas_calls(prefix: int, canvases: int, C: int, steps: int) -> list[CallRecord]:
    """DiffusionGemma's loop: per canvas j one encoder call, then ``steps`` decoder calls.

    The encoder feeds the new context (the ``prefix`` rows, then each finished canvas); the
    decoder calls attend to the K = prefix + j·C cached rows and the C canvas rows.
    """
    calls: list[CallRecord] = []
    for j in range(canvases):
        K = prefix + j * C
        n = prefix if j == 0 else C
        calls.append((n, n, K, 0))
        calls += [(C, C, K + C, C)] * steps
    return calls
