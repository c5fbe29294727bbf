"""diffusers' dLLM schedulers inside dlmbench's own block loop, on any denoiser (issue 12).

A diffusers scheduler object (``samplers/diffusers_support.py``: ``BlockRefinementScheduler``,
``EntropyBoundScheduler``, ``DiscreteDDIMScheduler``) decides what each step commits; this
sampler owns the loop, the network calls and their timing, exactly as every other dlmbench
sampler does, so a diffusers schedule is measured by the same clock, NFE and cost columns as an
MDLM or Eso-LM one. The loop is the one of the scheduler's own diffusers pipeline, step for step
(tested: same tokens as the pipeline for the same seed), so which loop ran is never in doubt.

**Mask corruption** (``mdlm`` family: the DiT, ModernBERT, LLaDA, Dream; scheduler
``BlockRefinementScheduler``), the loop of diffusers' ``LLaDA2Pipeline``:

1. The canvas [prompt ; masks] is cut into blocks of B = ``block_size`` positions counted from
   position 0 (a block may hold the prompt's tail; those positions are never edited). The
   scheduler's quota splits B commits evenly over T = min(``num_inference_steps``,
   G // ``minimal_topk``) steps (G = L − P generated positions).
2. Block j is refined by calls on the window [0, (j+1)·B) only (later blocks are not fed: the
   pipeline's stand-in for block-causal attention), head on the block's B rows.
3. Each call, ``scheduler.step`` samples a token per position (``temperature``,
   ``sampling_method``, ``top_k``, ``top_p``) and commits every masked position above
   ``threshold`` or, if fewer, the quota's most confident ones; with ``editing_threshold`` > 0
   it also rewrites committed tokens it now predicts with more confidence, for at most
   ``max_post_steps`` calls after the block is clean.
4. The block ends when it is clean (no editing), after T commit steps, or when editing stops.

**Uniform corruption** (``uniform_block`` family: DiffusionGemma; any of the three schedulers),
the loop of diffusers' ``DiffusionGemmaPipeline``:

1. The prompt is encoded once into the causal encoder cache (``model.encode``).
2. Each canvas of C = ``model.config.block_size`` positions starts uniformly random (drawn from
   the generator) and gets up to ``num_inference_steps`` decoder calls
   (``model.denoise``), each self-conditioned on the previous step's logits; a scheduler with
   ``corrector_steps`` (DiscreteDDIM) spends part of that budget on Gibbs corrector sweeps, as
   the pipeline does. With ``confidence_threshold`` set, a row stops once its argmax is stable
   for ``stability_threshold`` calls and its mean entropy is below the threshold; the canvas
   ends when every row has.
3. The finished canvas is appended to the encoder cache (one encoder call) before the next.
   ⌈G / C⌉ canvases are generated; tokens beyond G are dropped (their work is timed). Without a
   prompt the model's BOS is put at position 0 (P = 1), as the ``ar`` sampler does.

Deviations from the pipelines, all named: generation never stops early at EOS (every row
generates its G tokens; the pipelines' ``eos_early_stop`` is off); with mask corruption, a canvas
whose length is not a multiple of B is filled with masks to whole blocks (the pipeline marks
those tail positions as padding keys; the runner rounds task canvases to whole blocks, so they
agree there); ``suppress_mask_logit`` (default true) sets the mask token's logit to −∞ before the
scheduler sees it (dlmbench's SUBS rule; the pipeline passes raw logits, so a model that
predicts the mask token could commit it: set false to reproduce the pipeline bit for bit).

NFE: ``nfe_denoise`` = denoising calls; ``nfe_total`` adds the encoder calls (uniform).
Adaptive (threshold, entropy bound, editing, adaptive stopping): ``expected_calls`` is the
upper bound without early exits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

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
    CORRUPTION_OF_FAMILY,
    accepted_kwargs,
    build_scheduler,
    canvas_calls,
    scheduler_problems,
    takes_keyword,
    window_calls,
)
from samplers.lazytorch import lazy_torch, no_grad

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())


@dataclass(frozen=True)
class DiffusersBlocksConfig:
    """Settings of the ``diffusers_blocks`` sampler (field names are diffusers' own).

    Attributes:
        scheduler: a diffusers dLLM scheduler class name (``diffusers_support.SCHEDULERS``).
        scheduler_args: its constructor arguments (e.g. ``entropy_bound``, ``t_min``,
            ``corrector_steps``); validated against its signature.
        block_size: B, mask corruption's block (LLaDA2: 32); uniform corruption takes the
            model's canvas, so leave it null (or equal to the canvas).
        num_inference_steps: refinement steps per block / canvas (the pipelines' name).
        temperature: sampling temperature; 0 is greedy (diffusers' convention; its pipelines
            default to 0, dlmbench samplers to 1).
        sampling_method: ``auto`` | ``greedy`` | ``multinomial`` (BlockRefinement).
        top_k: top-k filter, or null (BlockRefinement).
        top_p: nucleus filter, or null (BlockRefinement).
        threshold: commit every position above this confidence (BlockRefinement; null = the
            scheduler's ``threshold``).
        editing_threshold: rewrite committed tokens above this confidence (> 0 enables;
            BlockRefinement, mask corruption).
        minimal_topk: least commits per step (BlockRefinement).
        max_post_steps: most editing calls after a block is clean.
        confidence_threshold: adaptive stop of a uniform canvas (DiffusionGemmaPipeline: 0.005),
            or null for every step.
        stability_threshold: calls the argmax must be stable before a row may stop.
        suppress_mask_logit: mask logit → −∞ before the scheduler (mask corruption).
    """

    scheduler: str = "BlockRefinementScheduler"
    scheduler_args: dict[str, Any] = field(default_factory=dict)
    block_size: int | None = 32
    num_inference_steps: int = 32
    temperature: float = 1.0
    sampling_method: Literal["auto", "greedy", "multinomial"] = "multinomial"
    top_k: int | None = None
    top_p: float | None = None
    threshold: float | None = None
    editing_threshold: float | None = None
    minimal_topk: int | None = None
    max_post_steps: int = 16
    confidence_threshold: float | None = 0.005
    stability_threshold: int = 1
    suppress_mask_logit: bool = True

    def problems(self) -> list[str]:
        """Every invalid value, as sentences (the scheduler's corruption is checked at plan)."""
        out = scheduler_problems(self.scheduler, self.scheduler_args)
        positive = {
            "num_inference_steps": self.num_inference_steps,
            "block_size": self.block_size,
            "minimal_topk": self.minimal_topk,
            "stability_threshold": self.stability_threshold,
        }
        for name, val in positive.items():
            if val is not None and (isinstance(val, bool) or val < 1):
                out.append(f"'{name}' is {val!r}; it must be an integer >= 1.")
        if self.temperature < 0:
            out.append(f"'temperature' is {self.temperature}; it must be >= 0 (0 is greedy).")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            out.append(f"'top_p' is {self.top_p}; it must lie in (0, 1], or be null.")
        if self.top_k is not None and self.top_k < 1:
            out.append(f"'top_k' is {self.top_k}; it must be >= 1, or null.")
        if self.max_post_steps < 0:
            out.append(f"'max_post_steps' is {self.max_post_steps}; it must be >= 0.")
        if self.confidence_threshold is not None and self.confidence_threshold <= 0:
            out.append(
                f"'confidence_threshold' is {self.confidence_threshold}; it must be > 0, or null "
                "to run every step."
            )
        return out


@dataclass
class DiffusersPlan:
    """Untimed preparation (replayable).

    Attributes:
        canvas: mask corruption: (b, nB) [prompt ; masks] padded to whole blocks; uniform:
            (b, P) the prompt (BOS without one).
        corruption: ``mask`` or ``uniform``.
        seq_len: L, the canvas returned.
        prompt_len: P.
        steps: T, steps per block after the ``minimal_topk`` cap (mask corruption).
        info: bookkeeping for the result.
    """

    canvas: Tensor
    corruption: str
    seq_len: int
    prompt_len: int
    steps: int
    info: dict[str, Any] = field(default_factory=dict)


@SAMPLERS.register("diffusers_blocks")
class DiffusersBlocks(PlanExecute):
    """A diffusers dLLM scheduler driven by dlmbench's block loop (module docstring).

    Args:
        config: a :class:`DiffusersBlocksConfig` (default: BlockRefinement, B = T = 32).

    Raises:
        ConfigError: listing every problem of ``config``.
    """

    name: ClassVar[str] = "diffusers_blocks"
    families: ClassVar[tuple[str, ...]] = ("mdlm", "uniform_block")
    config_class: ClassVar[type] = DiffusersBlocksConfig

    def __init__(self, config: DiffusersBlocksConfig | None = None) -> None:
        self.config = check_config(self.name, config or DiffusersBlocksConfig())

    def cache_kind(self) -> str | None:
        """None: no K/V cache of the canvas.

        Mask corruption re-runs the window; uniform corruption's encoder cache holds only
        clean, finished tokens, so it is exact.
        """
        return None

    # ---- plan (untimed) ----------------------------------------------------------------------

    def plan(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> DiffusersPlan:
        """Check the model against the scheduler and lay out the starting canvas."""
        check_family(self, model)
        check_common(batch_size, seq_len)
        corruption = CORRUPTION_OF_FAMILY[model.config.family]
        problems = scheduler_problems(self.config.scheduler, self.config.scheduler_args, corruption)
        if problems:
            raise SamplerError(f"sampler '{self.name}': " + " ".join(problems))
        dev = generator.device
        if corruption == "uniform":
            return self.plan_uniform(model, batch_size, seq_len, prompt, dev)
        prompt = check_prompt(prompt, batch_size, seq_len, model.config, dev)
        P = 0 if prompt is None else prompt.shape[1]
        B, cfg = int(self.config.block_size or 32), self.config
        T = min(cfg.num_inference_steps, (seq_len - P) // (cfg.minimal_topk or 1))
        if T < 1:
            raise SamplerError(
                f"sampler '{self.name}': {seq_len - P} generated positions with minimal_topk "
                f"{cfg.minimal_topk} leave no step; lower minimal_topk or raise seq_len."
            )
        total = -(-seq_len // B) * B
        canvas = torch.full((batch_size, total), model.config.mask_id, dtype=torch.long, device=dev)
        if prompt is not None:
            canvas[:, :P] = prompt
        info = {"block_size": B, "n_blocks": total // B - P // B, "steps_per_block": T}
        return DiffusersPlan(
            canvas, "mask", seq_len, P, T, {**info, **self.common_info(P, seq_len)}
        )

    def plan_uniform(
        self, model: Any, batch_size: int, seq_len: int, prompt: Any, dev: Any
    ) -> DiffusersPlan:
        """Uniform corruption: the prompt (or BOS) to encode, ⌈G / C⌉ canvases."""
        C = int(model.config.block_size)
        if self.config.block_size not in (None, C):
            raise SamplerError(
                f"sampler '{self.name}': block_size is {self.config.block_size} but this model's "
                f"canvas is {C} positions; set block_size: null (uniform corruption uses the "
                "model's canvas)."
            )
        if prompt is None:
            bos = model.config.bos_index
            if bos is None:
                raise SamplerError(
                    f"sampler '{self.name}': the model needs a prefix to encode and has no "
                    "bos_index; give a prompt (a tasks: section) or set hf.bos_id."
                )
            prompt = torch.full((batch_size, 1), int(bos), dtype=torch.long, device=dev)
        else:
            prompt = check_prompt(prompt, batch_size, seq_len, model.config, dev)
        P = prompt.shape[1]
        if seq_len <= P:
            raise SamplerError(
                f"sampler '{self.name}': seq_len {seq_len} leaves nothing to generate after the "
                f"{P}-token prefix; raise seq_len."
            )
        n_canvases = -(-(seq_len - P) // C)
        info = {"block_size": C, "n_blocks": n_canvases, "steps_per_block": self.budget()[0]}
        return DiffusersPlan(
            prompt, "uniform", seq_len, P, 0, {**info, **self.common_info(P, seq_len)}
        )

    def common_info(self, P: int, seq_len: int) -> dict[str, Any]:
        """Result bookkeeping shared by both corruptions."""
        return {
            "scheduler": self.config.scheduler,
            "nfe_expected": float("nan"),
            **prompt_info(P, seq_len),
        }

    def budget(self) -> tuple[int, int, int]:
        """(predictor steps, corrected steps, corrector sweeps) of a uniform canvas.

        A scheduler with ``corrector_steps`` c > 0 folds its sweeps into the step budget N as
        DiffusionGemmaPipeline does: the first k = ⌊(N − 1)/(1 + c)⌋ predictor steps each add c
        sweeps and N − k·c predictor steps run, so a canvas costs at most N calls.
        """
        N = self.config.num_inference_steps
        c = int(self.config.scheduler_args.get("corrector_steps", 0) or 0)
        k = (N - 1) // (1 + c) if c > 0 else 0
        return N - k * c, k, c

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """Upper bound on the calls (no early exits; adaptive steps stop sooner)."""
        cfg = self.config
        if CORRUPTION_OF_FAMILY.get(model_config.family) == "uniform":
            C = int(model_config.block_size)
            P = max(prompt_len, 1)
            steps, corrected, sweeps = self.budget()
            return canvas_calls(P, -(-(seq_len - P) // C), C, steps + corrected * sweeps)
        B = int(cfg.block_size or 32)
        T = min(cfg.num_inference_steps, (seq_len - prompt_len) // (cfg.minimal_topk or 1))
        editing = cfg.editing_threshold is not None and cfg.editing_threshold > 0
        # a block clean after k < T commit steps may make max_post_steps + 1 editing calls
        post = cfg.max_post_steps if editing else 0
        return window_calls(prompt_len, seq_len, B, max(T, 0) + post, head=B)

    # ---- execute (timed) ---------------------------------------------------------------------

    @no_grad
    def execute(
        self, model: Any, plan: DiffusersPlan, *, generator: torch.Generator
    ) -> SampleResult:
        """Run the loop of the module docstring; returns (b, L) tokens."""
        scheduler = build_scheduler(self.config.scheduler, self.config.scheduler_args)
        calls: list[CallRecord] = []
        sizes: list[float] = []
        if plan.corruption == "mask":
            tokens = self.refine_blocks(model, plan, scheduler, generator, calls, sizes)
            n_denoise = len(calls)
        else:
            tokens, n_denoise = self.denoise_canvases(model, plan, scheduler, generator, calls)
        return SampleResult(
            tokens=tokens,
            nfe_denoise=n_denoise,
            nfe_total=len(calls),
            token_forwards=sum(c[0] for c in calls),
            step_sizes=sizes,
            calls=calls,
            info=dict(plan.info),
        )

    # ---- mask corruption: LLaDA2Pipeline's loop ----------------------------------------------

    def refine_blocks(
        self,
        model: Any,
        plan: DiffusersPlan,
        scheduler: Any,
        generator: torch.Generator,
        calls: list[CallRecord],
        sizes: list[float],
    ) -> Tensor:
        """Blocks left to right over the window [0, end); returns the (b, L) canvas."""
        x = plan.canvas.clone()
        B, P = int(plan.info["block_size"]), plan.prompt_len
        scheduler.set_timesteps(plan.steps, device=x.device, block_length=B)
        for j in range(P // B, x.shape[1] // B):
            self.refine_block(model, x, j, B, P, scheduler, generator, calls, sizes)
        return x[:, : plan.seq_len]

    def refine_block(
        self,
        model: Any,
        x: Tensor,
        j: int,
        B: int,
        P: int,
        scheduler: Any,
        generator: torch.Generator,
        calls: list[CallRecord],
        sizes: list[float],
    ) -> None:
        """Refine block j (positions [jB, (j+1)B)) of x (b, nB) in place."""
        cfg, mask_id = self.config, model.config.mask_id
        end = (j + 1) * B
        window, block = x[:, :end], x[:, end - B : end]  # views: commits write into x
        frozen = torch.arange(end - B, end, device=x.device) < P  # (B,) the prompt's tail
        editing = cfg.editing_threshold is not None and cfg.editing_threshold > 0
        step_args = self.block_step_args(mask_id, frozen, generator)
        never_finished = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)  # no EOS stop
        step, post = 0, 0
        while True:
            masks_left = bool((block == mask_id).any())
            post += 0 if masks_left else 1
            logits = model(window, logits=B)  # (b, B, V)
            calls.append((end, end, end, B))
            if cfg.suppress_mask_logit:
                logits = logits.clone()
                logits[..., mask_id] = float("-inf")
            out = scheduler.step(logits, step, block.clone(), **step_args)
            chosen = out.transfer_index | out.editing_transfer_index  # (b, B)
            block.copy_(torch.where(chosen, out.prev_sample, block))
            sizes.append(float(out.transfer_index.sum(-1).double().mean()))
            step += 1 if masks_left else 0
            if not scheduler.check_block_should_continue(
                step_idx=step,
                masks_remaining=masks_left,
                editing_enabled=editing,
                editing_transfer_index=out.editing_transfer_index,
                post_steps=post,
                max_post_steps=cfg.max_post_steps,
                finished=never_finished,
            ):
                return

    def block_step_args(self, mask_id: int, frozen: Tensor, generator: Any) -> dict[str, Any]:
        """The keyword arguments of ``BlockRefinementScheduler.step`` (as the pipeline passes)."""
        cfg = self.config
        return {
            "mask_token_id": mask_id,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "top_k": cfg.top_k,
            "sampling_method": cfg.sampling_method,
            "threshold": cfg.threshold,
            "editing_threshold": cfg.editing_threshold,
            "minimal_topk": cfg.minimal_topk,
            "prompt_mask": frozen,
            "generator": generator,
            "return_dict": True,
        }

    # ---- uniform corruption: DiffusionGemmaPipeline's loop -----------------------------------

    def denoise_canvases(
        self,
        model: Any,
        plan: DiffusersPlan,
        scheduler: Any,
        generator: torch.Generator,
        calls: list[CallRecord],
    ) -> tuple[Tensor, int]:
        """Encode the prompt, then ⌈G / C⌉ canvases; returns ((b, L) tokens, decoder calls)."""
        prefix = plan.canvas
        b, P = prefix.shape
        C, n = int(plan.info["block_size"]), int(plan.info["n_blocks"])
        steps = self.budget()[0]
        if takes_keyword(scheduler.set_timesteps, "block_length"):
            scheduler.set_timesteps(steps, device=prefix.device, block_length=C)
        else:
            scheduler.set_timesteps(steps, device=prefix.device)
        cache = model.encode(prefix)
        calls.append((P, P, P, 0))
        out, decoder_calls = [prefix], 0
        for i in range(n):
            if i:
                past = P + i * C
                cache = model.encode(out[-1], cache)
                calls.append((C, C, past, 0))
            canvas, used = self.denoise_canvas(
                model, cache, b, P + i * C, scheduler, generator, calls
            )
            out.append(canvas)
            decoder_calls += used
        return torch.cat(out, dim=1)[:, : plan.seq_len], decoder_calls

    def denoise_canvas(
        self,
        model: Any,
        cache: Any,
        b: int,
        past: int,
        scheduler: Any,
        generator: torch.Generator,
        calls: list[CallRecord],
    ) -> tuple[Tensor, int]:
        """One canvas from uniform noise; returns ((b, C) tokens, decoder calls)."""
        cfg, V = self.config, int(model.config.vocab_size)
        C = int(model.config.block_size)
        dev = generator.device
        canvas = torch.randint(0, V, (b, C), device=dev, generator=generator)
        steps, corrected, sweeps = self.budget()
        step_args = accepted_kwargs(
            scheduler.step,
            {"mask_token_id": None, "temperature": cfg.temperature, "generator": generator},
        )
        stop = AdaptiveStop(b, C, cfg.stability_threshold, cfg.confidence_threshold, canvas)
        used, cond = 0, None
        for step in range(steps):
            logits = model.denoise(canvas, cache, self_conditioning_logits=cond)  # (b, C, V)
            calls.append((C, C, past + C, C))
            used += 1
            res = scheduler.step(
                model_output=logits, timestep=step, sample=canvas, return_dict=True, **step_args
            )
            canvas, cond = res.prev_sample, res.pred_logits
            for _ in range(sweeps if step < corrected else 0):
                logits = model.denoise(canvas, cache, self_conditioning_logits=cond)
                calls.append((C, C, past + C, C))
                used += 1
                canvas = scheduler.step_correct(
                    model_output=logits, timestep=step, sample=canvas, generator=generator
                ).prev_sample
            canvas = stop.update(canvas, cond)
            if stop.all_done():
                break
        return canvas, used


class AdaptiveStop:
    """DiffusionGemmaPipeline's adaptive stop of one canvas.

    A row is finished once its argmax has been the same for ``stability`` calls and its mean
    per-position entropy is below ``threshold``; a finished row's canvas is its argmax from then
    on. ``threshold`` None never stops.
    """

    def __init__(
        self, b: int, C: int, stability: int, threshold: float | None, canvas: Tensor
    ) -> None:
        self.threshold = threshold
        self.done = torch.zeros(b, dtype=torch.bool, device=canvas.device)
        self.argmax = canvas
        self.history = torch.full(
            (max(stability, 1), b, C), -1, dtype=torch.long, device=canvas.device
        )

    def update(self, canvas: Tensor, logits: Tensor) -> Tensor:
        """Record this call's logits (b, C, V); returns the canvas with finished rows frozen."""
        if self.threshold is None:
            return canvas
        now = torch.where(self.done[:, None], self.argmax, logits.argmax(dim=-1))
        stable = (self.history == now[None]).all(dim=-1).all(dim=0)
        self.history = torch.roll(self.history, shifts=-1, dims=0)
        self.history[-1] = now
        entropy = torch.distributions.Categorical(logits=logits.float()).entropy().mean(-1)
        self.done = self.done | (stable & (entropy < self.threshold))
        self.argmax = now
        return torch.where(self.done[:, None], now, canvas)

    def all_done(self) -> bool:
        """Every row finished (the canvas ends)."""
        return self.threshold is not None and bool(self.done.all())
