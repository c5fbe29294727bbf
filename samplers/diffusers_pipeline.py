"""diffusers' dLLM pipelines timed as black boxes (``diffusers_pipeline``; optional extra).

The sampler hands the whole generation loop to a diffusers pipeline (tested with 0.42) and only
prepares its inputs (untimed ``plan``) and reads its output and call counts (timed ``execute``):

* ``LLaDA2Pipeline`` (``mdlm`` family, mask corruption): blocks of ``block_length`` positions
  aligned to absolute position 0 (the block holding the prompt's end is the first one refined);
  every refinement step is one forward over the window [0, end of the current block), so there is
  no cache (``cache_kind`` None). The canvas runs to the next block boundary past P + G; the tail
  beyond P + G is masked out of attention but still refined, then cut off.
* ``DiffusionGemmaPipeline`` (``uniform_block`` family, no mask token): per canvas of C tokens,
  one causal encoder call appends the new context to a K/V cache (``cache_kind`` ``kv``), then up
  to ``num_inference_steps`` decoder calls denoise a uniformly random canvas against it.

What the pipeline gets as ``model``: an HF adapter's own model (``adapter.model``, the true black
box) when the pipeline's call ``model(input_ids, attention_mask=(b, n) 0/1, position_ids=)``
fits it; a shim that makes that call on the dlmbench denoiser for a DiT and for HF models that do
not fit it (shifted logits, a 4-D mask, no ``position_ids``); the DiT shim sets the mask logit
to −inf (SUBS), which the pipeline never does. DiffusionGemma gets its own model;
where transformers renamed ``past_key_values`` to ``cache`` (>= 5.24) and diffusers 0.42 still
passes ``past_key_values``, a thin proxy renames the keyword (:func:`gemma_model_for_pipeline`,
``info["pipeline_compat"]``). DiffusionGemma takes no ``input_ids``: a processor shim returns
dlmbench's prompt ids from ``apply_chat_template`` and the model's EOS as its tokenizer's.

Lengths: L = P + G. LLaDA2 gets ``gen_length = G``. DiffusionGemma generates ⌈G / C⌉ whole
canvases (diffusers rounds G up) and the sampler keeps the first G tokens: refusing G not a
multiple of C would refuse most prompt buckets of a fixed L, so the tail canvas is generated,
paid for in the calls, and cut off (``info["generated_untrimmed"]``).

Unconditional runs (``prompt=None``): LLaDA2 gets an empty (b, 0) prompt and generates all L
positions; DiffusionGemma's encoder needs at least one token, so it is given the model's BOS as a
one-token prompt that is not part of ``tokens`` (``info["implicit_prompt"]``); a model without a
BOS id is refused.

EOS early stop (the pipelines' default ``eos_early_stop: true``, EOS = the model's ``eos_index``
unless ``call_args.eos_token_id`` says otherwise): LLaDA2 freezes a row once it commits EOS, so
masks stay after it; DiffusionGemma stops making canvases once every row holds EOS, so its output
is shorter than G. Both are filled with EOS after the row's first EOS and counted in
``info["eos_filled"]``; a mask left anywhere else is counted in ``info["masks_left"]``.

Sampling arguments are diffusers' own (``call_args``), except that ``temperature`` defaults to
1.0 (diffusers' 0.0 is greedy: every seed the same tokens); ``temperature: 0.0`` asks for greedy.

Behaviour of the pipelines (diffusers 0.42) worth knowing when reading results: LLaDA2 never
excludes the mask id when sampling (a model that ranks it first commits it, and the position
counts as masked again); it tests for masks before each call, so a block whose masks run out
before ``num_inference_steps`` makes one more call; it caps the steps at G // ``minimal_topk``;
editing is on by default (``editing_threshold`` 0.5, up to ``max_post_steps`` 16 extra calls per
block). DiffusionGemma returns the last canvas as it stands: under EntropyBoundScheduler with
``confidence_threshold: null`` the positions not accepted on the last step hold uniform renoise
(the model's own ``generate`` returns the argmax of the last logits instead; seen on the tiny
test model); with the default 0.005 a row that converged gets that argmax. Its EOS stop waits
for every row; a row keeps generating after its EOS.

Counting: forward (pre-)hooks on the modules the pipeline calls, installed for the call and
removed after it even on error. LLaDA2: each model forward, (n, n, n, n) for a window of n rows
(the model's head runs on every row; the pipeline keeps the block's). DiffusionGemma: each decoder
forward through the top model, (C, C, K + C, C) against K filled cache rows (with
``cache_implementation: static`` the attention may span the whole buffer; K still counts the filled
rows), and each encoder forward, (n, n, K + n, 0); ``nfe_denoise`` counts decoder calls only,
``nfe_total`` both. :meth:`DiffusersPipeline.expected_calls` is an analytic upper bound (blocks ×
steps, plus editing post-steps; canvases × steps): adaptive thresholds and early stops make fewer.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

from dlmcore.errors import short_repr
from samplers.base import (
    SAMPLERS,
    CallRecord,
    PlanExecute,
    SamplerError,
    SampleResult,
    check_common,
    check_config,
    check_family,
    check_prompt,
    prompt_info,
)
from samplers.diffusers_support import (
    FAMILY_OF_CORRUPTION,
    INSTALL_HINT,
    PIPELINES,
    args_problems,
    build_scheduler,
    canvas_calls,
    import_diffusers,
    name_problems,
    scheduler_class,
    scheduler_problems,
    takes_keyword,
    window_calls,
)
from samplers.lazytorch import lazy_torch, no_grad

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())

"""The dlmbench model family each pipeline corruption drives."""

SET_BY_DLMBENCH: dict[str, str] = {
    "input_ids": "the prompt",
    "attention_mask": "the prompt",
    "prompt": "the prompt",
    "messages": "the prompt",
    "image": "the prompt (token ids only)",
    "gen_length": "seq_len minus the prompt length",
    "generator": "the run's seed",
    "output_type": "its own output handling ('seq')",
    "return_dict": "its own output handling",
    "callback_on_step_end": "its own call counting",
    "callback_on_step_end_tensor_inputs": "its own call counting",
    "mask_token_id": "the model's mask id",
}
"""Pipeline ``__call__`` arguments dlmbench sets itself, with where each comes from."""

DLMBENCH_DEFAULTS: dict[str, Any] = {"temperature": 1.0}
"""``call_args`` dlmbench defaults differently from diffusers: it samples (diffusers' temperature
0.0 is greedy, the same tokens for every seed); give ``temperature: 0.0`` for greedy."""

POSITIVE_INTS = ("num_inference_steps", "block_length", "minimal_topk", "stability_threshold")
"""``call_args`` keys that must be integers >= 1 when given (``block_length`` may be null)."""


@dataclass(frozen=True)
class DiffusersPipelineConfig:
    """Settings of the ``diffusers_pipeline`` sampler.

    Attributes:
        pipeline: ``LLaDA2Pipeline`` (mdlm models) or ``DiffusionGemmaPipeline``.
        scheduler: a diffusers dLLM scheduler (``samplers.diffusers_support.SCHEDULERS``) that
            serves the pipeline's corruption.
        scheduler_args: keyword arguments of the scheduler's constructor.
        call_args: keyword arguments of the pipeline's ``__call__`` (``num_inference_steps``,
            ``block_length``, ``threshold``, ``temperature``, ``eos_early_stop`` …), except
            those dlmbench sets (:data:`SET_BY_DLMBENCH`); omitted ones keep diffusers' defaults,
            except ``temperature``, 1.0 unless given (:data:`DLMBENCH_DEFAULTS`).
    """

    pipeline: str = "LLaDA2Pipeline"
    scheduler: str = "BlockRefinementScheduler"
    scheduler_args: dict[str, Any] = field(default_factory=dict)
    call_args: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Every invalid value or combination, as sentences (diffusers is imported here)."""
        out = name_problems("pipeline", self.pipeline, PIPELINES)
        corruption = PIPELINES.get(self.pipeline) if isinstance(self.pipeline, str) else None
        sched = scheduler_problems(self.scheduler, self.scheduler_args, corruption)
        out += sched
        if any(INSTALL_HINT in p for p in sched):
            return out  # diffusers missing: one sentence says so; nothing else can be checked
        if corruption is not None:
            out += call_args_problems(self.pipeline, self.call_args)
        return out


def pipeline_class(name: str) -> type:
    """The diffusers pipeline class ``name`` (diffusers imported here)."""
    return getattr(import_diffusers(), name)


def call_parameters(name: str) -> dict[str, Any]:
    """``__call__`` keyword parameters of pipeline ``name`` → their defaults."""
    params = inspect.signature(pipeline_class(name).__call__).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: p.default for k, p in params.items() if k != "self" and p.kind in kinds}


def call_args_problems(name: str, args: Any) -> list[str]:
    """Keys of ``call_args`` that ``name.__call__`` lacks or dlmbench sets, and bad values."""
    params = list(call_parameters(name))
    allowed = [k for k in params if k not in SET_BY_DLMBENCH]
    if not isinstance(args, dict):
        return args_problems("call_args", f"{name}.__call__", args, allowed)
    out = [
        f"'call_args' has {key!r}, which dlmbench sets itself from {SET_BY_DLMBENCH[key]} "
        "(seq_len, prompt and seed come from the run). Remove it."
        for key in args
        if key in SET_BY_DLMBENCH and key in params
    ]
    unknown = {k: v for k, v in args.items() if k not in params}
    out += args_problems("call_args", f"{name}.__call__", unknown, allowed)
    for key in POSITIVE_INTS:
        val = args.get(key, 1)
        if key == "block_length" and val is None:
            continue
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            out.append(f"'call_args.{key}' is {short_repr(val)}; it must be an integer >= 1.")
    temp = args.get("temperature", 0.0)
    if isinstance(temp, bool) or not isinstance(temp, int | float) or temp < 0:
        out.append(
            f"'call_args.temperature' is {short_repr(temp)}; it must be a number >= 0 "
            "(0 is greedy)."
        )
    return out


# --------------------------------------------------------------------------------------------
# What the pipeline gets as its model and processor
# --------------------------------------------------------------------------------------------


def rename_cache_keyword(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``past_key_values=`` → ``cache=`` (transformers >= 5.24 spelling); other keys unchanged."""
    if "past_key_values" in kwargs:
        kwargs = dict(kwargs)
        kwargs["cache"] = kwargs.pop("past_key_values")
    return kwargs


def gemma_needs_rename(model: Any) -> bool:
    """Whether ``model`` (a DiffusionGemma) needs diffusers' ``past_key_values=`` renamed.

    transformers >= 5.24 calls the argument ``cache=``; 5.23 and diffusers 0.42 say
    ``past_key_values=``. Decided from the signatures of the three calls the pipeline makes.
    """
    fns = (
        model.forward,
        model.model.encoder.forward,
        model.model.decoder.create_diffusion_decoder_attention_mask,
    )
    return any(
        not takes_keyword(fn, "past_key_values") and takes_keyword(fn, "cache") for fn in fns
    )


def gemma_model_for_pipeline(model: Any) -> Any:
    """What ``DiffusionGemmaPipeline`` gets as ``model`` for a DiffusionGemma model.

    The model itself where its calls take ``past_key_values=`` (transformers <= 5.23), else a
    proxy module that renames it ``cache=`` in the three calls diffusers 0.42 makes
    (``model(...)``, ``model.model.encoder(...)``,
    ``model.model.decoder.create_diffusion_decoder_attention_mask(...)``) and forwards
    everything else. The proxy holds the model as its only submodule (``.wrapped``), so hooks
    on the model see every call.
    """
    if not gemma_needs_rename(model):
        return model
    return shim_classes().CacheRenameProxy(model)


class RenamingCall:
    """A callable that renames ``past_key_values=`` to ``cache=`` before calling ``fn``."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with the cache keyword renamed."""
        return self.fn(*args, **rename_cache_keyword(kwargs))


class RenamingView:
    """A view of ``target`` whose listed attributes rename the cache keyword; others pass."""

    def __init__(self, target: Any, calls: dict[str, Any]) -> None:
        self._target = target
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        if name in self._calls:
            return self._calls[name]
        return getattr(self._target, name)


@functools.cache
def shim_classes() -> SimpleNamespace:
    """The ``nn.Module`` shims, defined on first use so that importing samplers needs no torch.

    Returns a namespace with ``HFCallShim`` and ``CacheRenameProxy``.
    """
    from torch import nn

    class HFCallShim(nn.Module):
        """HF's call on a dlmbench denoiser (a DiT, or an HF adapter).

        ``forward(input_ids, attention_mask=None, position_ids=None)`` → ``.logits`` (b, n, V).

        A DiT's logits get SUBS (mask logit → −inf): its raw logits leave that to the sampler
        (``samplers/base.py``), and LLaDA2Pipeline never excludes the mask id, so a DiT that
        ranks the mask token first would have it committed as a token. HF adapters' logits
        pass as they are (those models are trained not to predict the mask).

        Args:
            denoiser: the model; ``kind`` ``dit`` (a (b, 1, n, n) key mask, positions) or
                ``adapter`` (a (b, n) key mask, positions where its model takes them).
        """

        def __init__(self, denoiser: Any, kind: str) -> None:
            super().__init__()
            self.denoiser = denoiser
            self.kind = kind

        @property
        def device(self) -> Any:
            """Where the denoiser's weights live (the pipeline's execution device)."""
            return next(self.denoiser.parameters()).device

        def forward(
            self,
            input_ids: Tensor,
            attention_mask: Tensor | None = None,
            position_ids: Tensor | None = None,
            **_: Any,
        ) -> SimpleNamespace:
            """(b, n) ids, (b, n) 0/1 key mask, (b, n) positions → ``.logits`` (b, n, V)."""
            mask = None if attention_mask is None else attention_mask.bool()
            if self.kind == "dit":
                if mask is not None:
                    b, n = mask.shape
                    mask = mask[:, None, None, :].expand(b, 1, n, n)
                out = self.denoiser(input_ids, positions=position_ids, attn_mask=mask)
                out[..., self.denoiser.config.mask_id] = float("-inf")  # SUBS (see below)
            else:
                pos = position_ids if getattr(self.denoiser, "takes_position_ids", False) else None
                out = self.denoiser(input_ids, positions=pos, attn_mask=mask)
            return SimpleNamespace(logits=out)

    class CacheRenameProxy(nn.Module):
        """A DiffusionGemma taking ``past_key_values=`` (see :func:`gemma_model_for_pipeline`)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.wrapped = model
            core = model.model
            self._core = RenamingView(
                core,
                {
                    "encoder": RenamingCall(core.encoder),
                    "decoder": RenamingView(
                        core.decoder,
                        {
                            "create_diffusion_decoder_attention_mask": RenamingCall(
                                core.decoder.create_diffusion_decoder_attention_mask
                            )
                        },
                    ),
                },
            )

        @property
        def model(self) -> Any:
            """``model.model`` with the encoder call and the mask builder renaming."""
            return self._core

        @property
        def config(self) -> Any:
            """The wrapped model's config (``canvas_length``, ``get_text_config``)."""
            return self.wrapped.config

        @property
        def device(self) -> Any:
            """The wrapped model's device."""
            return self.wrapped.device

        @property
        def dtype(self) -> Any:
            """The wrapped model's dtype."""
            return self.wrapped.dtype

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            """The wrapped model's forward with ``past_key_values=`` renamed ``cache=``."""
            return self.wrapped(*args, **rename_cache_keyword(kwargs))

    return SimpleNamespace(HFCallShim=HFCallShim, CacheRenameProxy=CacheRenameProxy)


def fits_llada_call(hf_model: Any, config: Any) -> bool:
    """Whether an HF model takes LLaDA2Pipeline's call as it is.

    That needs unshifted logits, a (b, n) mask, and ``attention_mask`` / ``position_ids``
    keywords (named, or taken by ``**kwargs``).
    """
    if getattr(config, "logits_shift", False) or getattr(config, "attention_mask", "2d") != "2d":
        return False
    params = inspect.signature(hf_model.forward).parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return "attention_mask" in params and ("position_ids" in params or var_kw)


def llada_model(model: Any) -> tuple[Any, str]:
    """What LLaDA2Pipeline gets as ``model`` and how it was chosen.

    Returns ``(module, how)``: ``raw`` (the adapter's own HF model), ``adapter_shim`` (an HF
    model whose call differs, through its adapter) or ``dit_shim`` (a dlmbench DiT).
    """
    hf_model = getattr(model, "model", None)
    if hf_model is not None:
        if fits_llada_call(hf_model, model.config):
            return hf_model, "raw"
        return shim_classes().HFCallShim(model, "adapter"), "adapter_shim"
    return shim_classes().HFCallShim(model, "dit"), "dit_shim"


class PromptProcessor:
    """DiffusionGemmaPipeline's ``processor``, handing it dlmbench's prompt ids.

    ``apply_chat_template`` returns the (b, P) prompt ids (and a ones mask) whatever it is
    asked; ``eos_token_id`` is the model's EOS (the pipeline's early stop).
    """

    def __init__(self, ids: Tensor, eos_token_id: int | None) -> None:
        self.ids = ids
        self.eos_token_id = eos_token_id

    def apply_chat_template(self, messages: Any, **_: Any) -> dict[str, Tensor]:
        """``{"input_ids": (b, P), "attention_mask": (b, P) ones}``; ``messages`` is ignored."""
        return {"input_ids": self.ids, "attention_mask": torch.ones_like(self.ids)}


# --------------------------------------------------------------------------------------------
# Counting the calls
# --------------------------------------------------------------------------------------------


def cache_rows(kwargs: dict[str, Any]) -> int:
    """Filled rows of the K/V cache a call was given (``cache=`` / ``past_key_values=``).

    0 without a cache; a static cache counts its filled rows too, not its whole buffer.
    """
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return 0 if cache is None else int(cache.get_seq_length())


def fed_ids(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Tensor:
    """The (b, n) ids a hooked call was given as ``name=`` or first positional argument."""
    return kwargs[name] if kwargs.get(name) is not None else args[0]


@dataclass
class CallLog:
    """Calls seen by the hooks, in order: ``(kind, CallRecord)``, kind ``denoise`` or ``encode``."""

    calls: list[tuple[str, CallRecord]] = field(default_factory=list)

    def window(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """LLaDA2: one forward over a window of n rows, head on every row."""
        n = int(fed_ids(args, kwargs, "input_ids").shape[1])
        self.calls.append(("denoise", (n, n, n, n)))

    def decoder(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """DiffusionGemma top model: one decoder call of C canvas rows against the cache."""
        C = int(fed_ids(args, kwargs, "decoder_input_ids").shape[1])
        self.calls.append(("denoise", (C, C, cache_rows(kwargs) + C, C)))

    def encoder(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """DiffusionGemma encoder: n new context rows appended to the cache (no head)."""
        n = int(fed_ids(args, kwargs, "input_ids").shape[1])
        self.calls.append(("encode", (n, n, cache_rows(kwargs) + n, 0)))


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------


@dataclass
class PipelinePlan:
    """Untimed preparation (replayable).

    Attributes:
        pipe: the diffusers pipeline around the model (progress bars off).
        kwargs: its ``__call__`` arguments except ``generator``.
        hooks: ``(module, CallLog method name)`` to hook for the call.
        prompt: (b, P) the prompt put back in ``tokens`` (P = 0 unconditional).
        gen_tokens: G = L − P.
        mask_id: the mask id to look for in the output (None: uniform corruption).
        eos_id: the EOS the pipeline stops at (None: no early stop).
        info: what the result carries.
    """

    pipe: Any
    kwargs: dict[str, Any]
    hooks: list[tuple[Any, str]]
    prompt: Tensor
    gen_tokens: int
    mask_id: int | None
    eos_id: int | None
    info: dict[str, Any] = field(default_factory=dict)


@SAMPLERS.register("diffusers_pipeline")
class DiffusersPipeline(PlanExecute):
    """A diffusers dLLM pipeline (LLaDA2 or DiffusionGemma) run and timed as a black box.

    Args:
        config: a :class:`DiffusersPipelineConfig` (default: LLaDA2Pipeline with the
            BlockRefinementScheduler and diffusers' defaults).

    Raises:
        ConfigError: listing every problem of ``config`` (diffusers missing included).
    """

    name: ClassVar[str] = "diffusers_pipeline"
    families: ClassVar[tuple[str, ...]] = ("mdlm", "uniform_block")
    config_class: ClassVar[type] = DiffusersPipelineConfig

    def __init__(self, config: DiffusersPipelineConfig | None = None) -> None:
        self.config = check_config(self.name, config or DiffusersPipelineConfig())

    @property
    def corruption(self) -> str:
        """``mask`` (LLaDA2) or ``uniform`` (DiffusionGemma)."""
        return PIPELINES[self.config.pipeline]

    def cache_kind(self) -> str | None:
        """None for LLaDA2 (re-runs the window); ``kv`` for DiffusionGemma (encoder cache)."""
        return "kv" if self.corruption == "uniform" else None

    # ---- arguments with diffusers' defaults ---------------------------------------------------

    def call_arg(self, key: str) -> Any:
        """``call_args[key]``, else the pipeline ``__call__`` default."""
        if key in self.config.call_args:
            return self.config.call_args[key]
        if key in DLMBENCH_DEFAULTS:
            return DLMBENCH_DEFAULTS[key]
        return call_parameters(self.config.pipeline)[key]

    def scheduler_arg(self, key: str) -> Any:
        """``scheduler_args[key]``, else the scheduler constructor's default."""
        if key in self.config.scheduler_args:
            return self.config.scheduler_args[key]
        cls = scheduler_class(self.config.scheduler)
        return inspect.signature(cls.__init__).parameters[key].default

    def block_length(self) -> int:
        """LLaDA2's block length: ``call_args.block_length``, else the scheduler's."""
        b = self.call_arg("block_length")
        return int(b if b is not None else self.scheduler_arg("block_length"))

    # ---- plan (untimed) -----------------------------------------------------------------------

    def plan(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> PipelinePlan:
        """Check the model and prompt, build the scheduler and the pipeline around the model.

        ``prompt``: (b, P) int64 fixed prefix, or ``None`` (see the module docstring).
        """
        check_family(self, model)
        check_common(batch_size, seq_len)
        self.check_model(model)
        dev = generator.device
        cfg = model.config
        prompt = check_prompt(prompt, batch_size, seq_len, cfg, dev)  # mask_id None: uniform
        P = 0 if prompt is None else prompt.shape[1]
        G = seq_len - P
        if prompt is None:
            prompt = torch.zeros(batch_size, 0, dtype=torch.long, device=dev)
        diffusers = import_diffusers()
        scheduler = build_scheduler(self.config.scheduler, self.config.scheduler_args)
        eos = self.config.call_args.get("eos_token_id", getattr(cfg, "eos_index", None))
        given = {**DLMBENCH_DEFAULTS, **self.config.call_args}
        user = {k: v for k, v in given.items() if k != "eos_token_id"}
        info: dict[str, Any] = {
            "pipeline": self.config.pipeline,
            "scheduler": self.config.scheduler,
            "diffusers_version": diffusers.__version__,
            "eos_token_id": eos,
            "nfe_expected": math.nan,
            "nfe_bound": self.nfe_bound(cfg, seq_len, P),
            **prompt_info(P, seq_len),
        }
        if self.corruption == "mask":
            pipe, kwargs, hooks = self.llada_pipeline(diffusers, model, scheduler, prompt, G, info)
        else:
            pipe, kwargs, hooks = self.gemma_pipeline(diffusers, model, scheduler, prompt, G, info)
        pipe.set_progress_bar_config(disable=True)
        kwargs.update(user, gen_length=G, output_type="seq", return_dict=True, eos_token_id=eos)
        return PipelinePlan(pipe, kwargs, hooks, prompt, G, cfg.mask_id, eos, info)

    def check_model(self, model: Any) -> None:
        """Refuse a model of the other pipeline's family, or a uniform one that is no Gemma.

        DiffusionGemmaPipeline reaches into ``model.model.encoder`` / ``.decoder``.
        """
        fam, want = model.config.family, FAMILY_OF_CORRUPTION[self.corruption]
        if fam != want:
            other = next(k for k, v in PIPELINES.items() if FAMILY_OF_CORRUPTION[v] == fam)
            raise SamplerError(
                f"pipeline {self.config.pipeline} drives {want}-family models; this model is "
                f"family '{fam}'. Use pipeline: {other}, or load a {want} model."
            )
        inner = getattr(model, "model", None)
        if want == "uniform_block" and not hasattr(getattr(inner, "model", None), "encoder"):
            raise SamplerError(
                f"DiffusionGemmaPipeline needs a DiffusionGemma model (hf: kind "
                f"diffusion_gemma); got a {type(model).__name__}. Load one with hf:<dir>."
            )

    def llada_pipeline(
        self, diffusers: Any, model: Any, scheduler: Any, prompt: Tensor, G: int, info: dict
    ) -> tuple[Any, dict[str, Any], list[tuple[Any, str]]]:
        """LLaDA2Pipeline on the raw HF model or a shim; input_ids = the prompt ((b, 0) if none)."""
        net, how = llada_model(model)
        pipe = diffusers.LLaDA2Pipeline(model=net, scheduler=scheduler)
        info.update(model_given=how, pipeline_compat=None, block_length=self.block_length())
        kwargs = {"input_ids": prompt, "mask_token_id": int(model.config.mask_id)}
        return pipe, kwargs, [(net, "window")]

    def gemma_pipeline(
        self, diffusers: Any, model: Any, scheduler: Any, prompt: Tensor, G: int, info: dict
    ) -> tuple[Any, dict[str, Any], list[tuple[Any, str]]]:
        """DiffusionGemmaPipeline on the model (or its proxy) with a processor shim.

        An unconditional run is prompted with BOS alone.
        """
        hf = model.model
        ids = prompt
        if prompt.shape[1] == 0:
            bos = getattr(model.config, "bos_index", None)
            if bos is None:
                raise SamplerError(
                    "DiffusionGemmaPipeline needs at least one prompt token (its encoder starts "
                    "the cache), and this model has no BOS id to use for an unconditional run. "
                    "Pass a prompt, or set hf.bos_id."
                )
            ids = torch.full((prompt.shape[0], 1), int(bos), dtype=torch.long, device=prompt.device)
            info["implicit_prompt"] = [int(bos)]
        net = gemma_model_for_pipeline(hf)
        eos = self.config.call_args.get("eos_token_id", getattr(model.config, "eos_index", None))
        processor = PromptProcessor(ids, eos)
        pipe = diffusers.DiffusionGemmaPipeline(model=net, scheduler=scheduler, processor=processor)
        C = int(hf.config.canvas_length)
        info.update(
            model_given="raw" if net is hf else "raw+cache_rename",
            pipeline_compat=None if net is hf else "past_key_values->cache",
            canvas_length=C,
            generated_untrimmed=-(-G // C) * C,
        )
        return pipe, {"prompt": ""}, [(hf, "decoder"), (hf.model.encoder, "encoder")]

    # ---- execute (timed) ----------------------------------------------------------------------

    @no_grad
    def execute(
        self, model: Any, plan: PipelinePlan, *, generator: torch.Generator
    ) -> SampleResult:
        """One pipeline call with hooks counting the network calls; tokens = [prompt ; G]."""
        log = CallLog()
        handles = [
            module.register_forward_pre_hook(getattr(log, kind), with_kwargs=True)
            for module, kind in plan.hooks
        ]
        try:
            out = self.call_pipeline(plan, generator)
        finally:
            for h in handles:
                h.remove()
        gen, info = self.finish_output(out.sequences, plan)
        calls = [rec for _, rec in log.calls]
        denoise = sum(kind == "denoise" for kind, _ in log.calls)
        return SampleResult(
            tokens=torch.cat([plan.prompt, gen.to(plan.prompt.device)], dim=1),
            nfe_denoise=denoise,
            nfe_total=len(calls),
            token_forwards=sum(c[0] for c in calls),
            calls=calls,
            info={**plan.info, **info, "encoder_calls": len(calls) - denoise},
        )

    def call_pipeline(self, plan: PipelinePlan, generator: torch.Generator) -> Any:
        """``pipe(**kwargs, generator=generator)``; a refusal of the arguments is a SamplerError."""
        try:
            return plan.pipe(**plan.kwargs, generator=generator)
        except ValueError as e:
            raise SamplerError(
                f"{self.config.pipeline} refused its arguments: {e} Fix call_args / "
                f"scheduler_args (given: {short_repr(self.config.call_args)})."
            ) from e

    def finish_output(self, seq: Tensor, plan: PipelinePlan) -> tuple[Tensor, dict[str, Any]]:
        """(b, n) pipeline output → (b, G) generated tokens and the bookkeeping of early stops.

        A DiffusionGemma output shorter than G (every row stopped at EOS) is padded with EOS; a
        LLaDA2 row frozen at EOS has its masks after the EOS set to EOS; both are counted in
        ``eos_filled``. Longer outputs (whole canvases) are cut to G.
        """
        G, filled = plan.gen_tokens, 0
        if seq.shape[1] < G:
            seq, filled = pad_with(seq, G, plan.eos_id)
        seq = seq[:, :G]
        masks_left = 0
        if plan.mask_id is not None:
            seq, n = fill_masks_after_eos(seq, plan.mask_id, plan.eos_id)
            filled += n
            masks_left = int((seq == plan.mask_id).sum())
        return seq, {"eos_filled": filled, "masks_left": masks_left}

    # ---- the cost model's expectation ---------------------------------------------------------

    def nfe_bound(self, model_config: Any, seq_len: int, prompt_len: int) -> int:
        """Upper bound on the denoising calls (see :meth:`expected_calls`)."""
        calls = self.expected_calls(
            model_config, batch_size=1, seq_len=seq_len, prompt_len=prompt_len
        )
        return sum(1 for c in calls if c[3] > 0)

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """An analytic UPPER BOUND on the calls, for the cost model.

        The pipelines stop early by threshold, EOS or confidence; the bound assumes none of it.

        LLaDA2: every block from the prompt's last one to ⌈L / B⌉ makes
        T′ = min(num_inference_steps, G // minimal_topk) steps, plus ``max_post_steps`` editing
        steps when editing is on, each over the window [0, block end). DiffusionGemma: per canvas
        (⌈G / C⌉ of them) one encoder call, then ``num_inference_steps`` decoder calls.
        """
        P, G = prompt_len, seq_len - prompt_len
        if self.corruption == "mask":
            return self.llada_calls(P, G)
        C = int(model_config.block_size)
        return canvas_calls(
            P if P > 0 else 1, -(-G // C), C, int(self.call_arg("num_inference_steps"))
        )

    def llada_calls(self, P: int, G: int) -> list[CallRecord]:
        """LLaDA2's bound: per block, T′ (+ ``max_post_steps`` if editing) window calls."""
        steps = min(
            int(self.call_arg("num_inference_steps")), G // int(self.call_arg("minimal_topk"))
        )
        edit = self.call_arg("editing_threshold")
        if edit is not None and edit > 0:
            steps += int(self.call_arg("max_post_steps"))
        return window_calls(P, P + G, self.block_length(), steps)


def pad_with(seq: Tensor, width: int, value: int | None) -> tuple[Tensor, int]:
    """(b, n) → (b, width) with ``value`` after the n columns; returns it and the filled count.

    Raises:
        SamplerError: there is nothing to fill with (no EOS id), which cannot stop early.
    """
    b, n = seq.shape
    if value is None:
        raise SamplerError(
            f"the pipeline returned {n} tokens per row, fewer than the {width} asked, without an "
            "EOS id to explain it. Report this with the pipeline and its version."
        )
    tail = torch.full((b, width - n), int(value), dtype=seq.dtype, device=seq.device)
    return torch.cat([seq, tail], dim=1), b * (width - n)


def fill_masks_after_eos(seq: Tensor, mask_id: int, eos_id: int | None) -> tuple[Tensor, int]:
    """(b, G) → (b, G) with every mask after a row's first EOS set to EOS; and how many.

    Masks before the first EOS (or in rows without EOS) stay.
    """
    if eos_id is None:
        return seq, 0
    is_eos = seq == eos_id
    after = is_eos.long().cumsum(dim=1) > 0  # at or after the first EOS
    hole = after & (seq == mask_id)
    return torch.where(hole, torch.full_like(seq, int(eos_id)), seq), int(hole.sum())
