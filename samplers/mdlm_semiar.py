"""Semi-autoregressive block loop on a bidirectional MDLM denoiser (LLaDA, Fast-dLLM).

Nie et al. 2025 (arXiv 2502.09992, §2.4 and App. B.3; reference ML-GSAI/LLaDA ``generate.py``)
and Wu et al. 2025 (Fast-dLLM, arXiv 2505.22618, §3.3). The generated region [P, L) after the
prompt is cut into blocks of ``block_length`` positions, filled left to right. Block j gets
``steps_per_block`` grid steps; the schedule splits its masked positions over them (``even``:
LLaDA's ``get_num_transfer_tokens``, ⌈n/T′⌉ for the first n mod T′ steps, then ⌊n/T′⌋), and the
policy picks which masked positions *inside the block* commit (``confidence``: LLaDA's
``low_confidence`` remasking; ``random``: its ``random``; ``margin``, ``entropy``;
``threshold``: Fast-dLLM's parallel decoding). Every step is one uncached forward over the whole
canvas [prompt ; finished blocks ; current block ; masked future blocks] (bidirectional, exact;
no cache), with the head on the current block's rows only. Tokens outside the current block
never change.

Mapping from LLaDA's ``generate(prompt, steps=S, gen_length=G, block_length=B)``:
``seq_len = P + G``, ``block_length = B``, ``steps_per_block = S·B/G`` (LLaDA requires G mod B = 0
and S mod (G/B) = 0, and then takes S/(G/B) steps per block), ``schedule: even``,
``policy: confidence`` (or ``random``). Fast-dLLM's threshold decoding (``threshold=τ``, one
token per step at least, loop until the block is clean) is ``policy: threshold``,
``policy_threshold: τ``, ``steps_per_block = block_length`` (so the schedule's floor is one
token per step); the loop leaves a block as soon as it is clean.

Deviations, all named: (1) a step whose count is zero for every row (T′ > masks in the block)
makes no call (the no-change cache; LLaDA calls the model and commits nothing), so NFE counts
only calls that commit; (2) when L − P is not a multiple of ``block_length`` the last block is
shorter (LLaDA asserts divisibility; prompts of any length must fit a fixed canvas); (3) the
sampling numerics are dlmbench's: SUBS (mask logit → −∞), temperature > 0 (LLaDA's default 0 is
greedy: use a small temperature), top-p, float64 Gumbel-max; confidence is the proposal's
probability under the tempered, filtered distribution (LLaDA uses the untempered softmax; equal
at temperature 1, top-p 1).

Fast-dLLM's approximate KV caches (Wu et al. 2025, arXiv 2505.22618; reference NVlabs/Fast-dLLM
``llada/generate.py``, ``generate_with_prefix_cache`` / ``generate_with_dual_cache``), option
``cache``:

* ``none`` (default): the exact path above, every step a full uncached forward.
* ``prefix``: the first step of block [s, e) is one full forward that also writes the K/V of all
  L rows (``forward_cached(x, start=0, causal=False)``; same logits as the uncached call); every
  later step of the block feeds rows [s, L) only (``start=s``), attending to the prefix K/V
  [0, s) from that block-start forward. Approximate on a bidirectional model: the prefix K/V were
  computed while the current block still held the masks that later steps commit.
* ``dual``: as ``prefix``, but later steps feed only the block rows [s, e); they attend to the
  cached prefix [0, s) *and* suffix [e, L) from the block-start forward. The denoiser's
  ``forward_cached`` attends over cache rows [0, start + n) only, so the fed block is written at
  rows [L, L + n) of an (L + B)-row cache and an ``attn_mask`` hides the stale block rows [s, e):
  keys = prefix ; suffix ; fresh block (dense cost L + n keys). A block with no suffix (e = L)
  is run as ``prefix``.

Where they provably equal ``none`` (same tokens, zero logit drift): a block's first step is
exact by construction, so ``steps_per_block = 1`` is exact for both; ``prefix`` with no prompt
and one block (s = 0: every step feeds the whole canvas) is exact; ``dual`` is ``prefix`` on the
last block. Everywhere else the cached K/V are stale and results may differ: run the agreement
report (``harness/run/agreement.py``, the runner's ``agree_*`` columns).

NFE: non-adaptive policies make Σ_blocks #{steps whose count is non-zero for some row} calls;
``even`` gives exactly Σ_j min(n_j, T′). Adaptive ones (``threshold``) stop a block early, at
most T′ calls per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from samplers.base import (
    SAMPLERS,
    CallRecord,
    PlanExecute,
    SamplerError,
    SampleResult,
    TopPConvention,
    check_common,
    check_config,
    check_family,
    check_prompt,
    gumbel_argmax,
    numerics_problems,
    prompt_canvas,
    prompt_info,
    sample_tokens,
    subs_log_probs,
    top_p_filter,
)
from samplers.bd3lm_block import block_counts, host_generator, reveal_probabilities
from samplers.lazytorch import lazy_torch, no_grad
from samplers.schedules import POLICIES, SCHEDULES, build, build_problems, policy_keys

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())


@dataclass(frozen=True)
class MDLMBlocksConfig:
    """Settings of the ``mdlm_blocks`` sampler (LLaDA / Fast-dLLM semi-autoregressive loop).

    Attributes:
        block_length: B, positions per block (LLaDA ``block_length``); the last block may be
            shorter. B ≥ L − P gives one block: plain MDLM decoding with the policy.
        steps_per_block: T′, grid steps per block (LLaDA: ``steps`` / number of blocks).
        schedule: ``SCHEDULES`` entry splitting a block's masks over T′ steps (``even`` = LLaDA).
        policy: ``POLICIES`` entry choosing which masked block positions commit.
        policy_threshold: τ for ``policy: threshold`` (Fast-dLLM; default 0.9).
        temperature: divides the logits.
        top_p: nucleus mass in (0, 1]; 1 disables it.
        top_p_convention: ``hf`` (keep the crossing token) or ``strict``.
        profile: network-only timing (same calls, placeholder tokens, no sampling arithmetic).
        cache: ``none`` (exact), or Fast-dLLM's approximate ``prefix`` / ``dual`` K/V cache.
    """

    block_length: int = 32
    steps_per_block: int = 32
    schedule: str = "even"
    policy: str = "confidence"
    policy_threshold: float | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_p_convention: TopPConvention = "hf"
    profile: bool = False
    cache: str = "none"

    def problems(self) -> list[str]:
        """Every invalid value or combination, as sentences."""
        out = []
        for name in ("block_length", "steps_per_block"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                out.append(f"'{name}' is {val!r}; it must be an integer >= 1 (LLaDA: 32).")
        out += build_problems(SCHEDULES, "schedule", self.schedule)
        policy_problems = build_problems(
            POLICIES, "policy", self.policy, threshold=self.policy_threshold
        )
        out += policy_problems
        if self.profile and not policy_problems and POLICIES.get(self.policy).adaptive:
            out.append(
                f"'profile' is true but policy '{self.policy}' is adaptive: its calls depend on "
                "the model, so network-only timing would not replay them. Set profile: false, or "
                "pick a non-adaptive policy."
            )
        if self.cache not in CACHE_MODES:
            out.append(
                f"'cache' is {self.cache!r}; it must be one of {', '.join(CACHE_MODES)} "
                "(none = exact; prefix / dual = Fast-dLLM's approximate caches)."
            )
        return out + numerics_problems(self)


CACHE_MODES = ("none", "prefix", "dual")
"""``mdlm_blocks`` cache options: the exact path and Fast-dLLM's two approximate caches."""


@dataclass
class BlocksPlan:
    """Untimed preparation (replayable).

    Attributes:
        canvas: (b, L) [prompt ; masks], the starting tokens and the profile-mode input.
        blocks: per block, its [start, end) positions on the canvas.
        steps: per block, the (b,) int64 count of each step to run (non-adaptive policies:
            only steps where some row commits).
        step_means: per block, the batch mean of each count.
        info: analytic NFE, prompt and block bookkeeping.
    """

    canvas: Tensor
    blocks: list[tuple[int, int]]
    steps: list[list[Tensor]]
    step_means: list[list[float]]
    info: dict[str, Any] = field(default_factory=dict)


def block_bounds(prompt_len: int, seq_len: int, block_length: int) -> list[tuple[int, int]]:
    """[start, end) of each block of the generated region [P, L); the last may be shorter."""
    return [(s, min(s + block_length, seq_len)) for s in range(prompt_len, seq_len, block_length)]


def expected_block_calls(
    schedule: Any, n_masked: int, steps_per_block: int, batch_size: int
) -> float:
    """E[calls for one block of n masked positions] under a non-adaptive policy.

    Deterministic schedules: the number of non-zero counts (``even``: min(n, T′)). Random ones:
    Σ_i 1 − (1 − q_i)^(b·n), q_i = P(a token is committed at step i) (batch no-change cache).
    """
    if getattr(schedule, "deterministic", False):
        counts = schedule.counts(n_masked, steps_per_block, torch.Generator(), 1.0)
        return float(sum(c > 0 for c in counts))
    q = reveal_probabilities(schedule, steps_per_block)
    return float((1.0 - (1.0 - q) ** (batch_size * n_masked)).sum())


@SAMPLERS.register("mdlm_blocks")
class MDLMBlocks(PlanExecute):
    """LLaDA / Fast-dLLM semi-autoregressive block loop over a full-canvas MDLM denoiser.

    Args:
        config: an :class:`MDLMBlocksConfig` (default: B = T′ = 32, even, confidence).

    Raises:
        ConfigError: listing every problem of ``config``.
    """

    name: ClassVar[str] = "mdlm_blocks"
    families: ClassVar[tuple[str, ...]] = ("mdlm",)
    config_class: ClassVar[type] = MDLMBlocksConfig

    def __init__(self, config: MDLMBlocksConfig | None = None) -> None:
        self.config = check_config(self.name, config or MDLMBlocksConfig())
        self.schedule = build(SCHEDULES, "schedule", self.config.schedule)
        self.policy = build(
            POLICIES, "policy", self.config.policy, threshold=self.config.policy_threshold
        )

    on_step: Any = None
    """Optional observer ``on_step(j, i, masked, logits)`` called after call i of block j with
    the block's (b, n_j) mask before the commit and the call's (b, n_j, V) raw logits (the
    agreement report records both paths with it); None in normal runs."""

    def cache_kind(self) -> str | None:
        """None: every step re-runs the whole canvas (no cache); ``kv`` for prefix / dual."""
        return None if self.config.cache == "none" else "kv"

    # ---- plan (untimed) ----------------------------------------------------------------------

    def plan(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> BlocksPlan:
        """Cut [P, L) into blocks and draw every block's per-row step counts.

        ``prompt``: (b, P) int64 fixed prefix, or ``None`` (see ``samplers/base.py``).
        """
        check_family(self, model)
        check_common(batch_size, seq_len)
        self.check_cache_support(model)
        dev = generator.device
        prompt = check_prompt(prompt, batch_size, seq_len, model.config, dev)
        P = 0 if prompt is None else prompt.shape[1]
        cfg, adaptive = self.config, self.policy.adaptive
        blocks = block_bounds(P, seq_len, cfg.block_length)
        gen = host_generator(generator)
        steps, means = [], []
        for s, e in blocks:
            counts = block_counts(self.schedule, e - s, cfg.steps_per_block, batch_size, gen)
            keep = [i for i in range(counts.shape[1]) if adaptive or bool(counts[:, i].any())]
            steps.append([counts[:, i].to(dev) for i in keep])
            means.append([float(counts[:, i].double().mean()) for i in keep])
        info = {
            "nfe_expected": self.expected_nfe(seq_len, P, batch_size),
            "nfe_expected_per_sequence": self.expected_nfe(seq_len, P, 1),
            "n_blocks": len(blocks),
            "block_length": cfg.block_length,
            "policy": cfg.policy,
            **prompt_info(P, seq_len),
        }
        canvas = prompt_canvas(prompt, batch_size, seq_len, model.config.mask_id, dev)
        return BlocksPlan(canvas, blocks, steps, means, info)

    def cache_rows(self, seq_len: int) -> int:
        """Rows of the K/V cache a run allocates, at most: L, or L + B for ``dual``.

        The dual cache writes the fresh block's K/V after the canvas (:meth:`new_cache`); the
        extra rows are the longest block, B unless the generated region is shorter.
        """
        extra = self.config.block_length if self.config.cache == "dual" else 0
        return seq_len + extra

    def check_cache_support(self, model: Any) -> None:
        """Refuse ``prefix`` / ``dual`` on a denoiser without the cached calls they need.

        Raises:
            SamplerError: the model has no ``forward_cached`` / ``new_kv_cache`` (e.g. an
                ``hf:`` adapter), naming the fix.
        """
        if self.config.cache == "none":
            return
        if not (hasattr(model, "forward_cached") and hasattr(model, "new_kv_cache")):
            raise SamplerError(
                f"sampler 'mdlm_blocks': cache '{self.config.cache}' needs a denoiser with a K/V "
                f"cache path (forward_cached, new_kv_cache); {type(model).__name__} has none "
                "(HF adapters run full forwards only). Use cache: none on this model."
            )

    def expected_nfe(self, seq_len: int, prompt_len: int, batch_size: int) -> float:
        """Σ_blocks E[calls] (NaN for an adaptive policy: model-dependent)."""
        if self.policy.adaptive:
            return float("nan")
        T = self.config.steps_per_block
        return sum(
            expected_block_calls(self.schedule, e - s, T, batch_size)
            for s, e in block_bounds(prompt_len, seq_len, self.config.block_length)
        )

    # ---- execute (timed) ---------------------------------------------------------------------

    @no_grad
    def execute(self, model: Any, plan: BlocksPlan, *, generator: torch.Generator) -> SampleResult:
        """Blocks left to right; each step one forward (full canvas, or cached) and commits."""
        x = plan.canvas.clone()  # (b, L)
        cache = self.new_cache(model, x, plan)
        calls: list[CallRecord] = []
        sizes: list[float] = []
        for j in range(len(plan.blocks)):
            sizes += self.denoise_block(model, x, j, plan, generator, calls, cache)
        n = len(calls)
        return SampleResult(
            tokens=x,
            nfe_denoise=n,
            nfe_total=n,
            token_forwards=sum(c[0] for c in calls),
            step_sizes=sizes,
            calls=calls,
            info={**plan.info, "profile": bool(self.config.profile), "cache": self.config.cache},
        )

    def new_cache(self, model: Any, x: Tensor, plan: BlocksPlan) -> Any:
        """None (``cache: none``), else a zeroed K/V cache of L rows (``dual``: L + B rows)."""
        if self.config.cache == "none":
            return None
        extra = max(e - s for s, e in plan.blocks) if self.config.cache == "dual" else 0
        return model.new_kv_cache(x.shape[0], x.shape[1] + extra)

    def denoise_block(
        self,
        model: Any,
        x: Tensor,
        j: int,
        plan: BlocksPlan,
        generator: torch.Generator,
        calls: list[CallRecord],
        cache: Any = None,
    ) -> list[float]:
        """Run block j's steps on x (b, L) in place; returns the batch-mean commits per call.

        Raises:
            SamplerError: an adaptive policy left masks in the block after its T′ steps.
        """
        s, e = plan.blocks[j]
        mask_id, adaptive = model.config.mask_id, self.policy.adaptive
        block = x[:, s:e]  # a view: commits write into x
        dual = self.dual_inputs(model, x, s, e)
        sizes: list[float] = []
        for i, k in enumerate(plan.steps[j]):
            masked = block == mask_id  # (b, n_j)
            if adaptive and not bool(masked.any()):
                break  # Fast-dLLM: leave the block once it is clean
            logits, record = self.block_forward(model, x, s, e, i, cache, dual)  # (b, n_j, V)
            calls.append(record)
            if self.on_step is not None:
                self.on_step(j, i, masked, logits)
            if self.config.profile:
                continue
            chosen = self.commit(block, masked, logits, k, mask_id, generator)
            if adaptive:
                sizes.append(float(chosen.sum(-1).double().mean()))
        if adaptive and not self.config.profile and bool((block == mask_id).any()):
            raise SamplerError(
                f"sampler 'mdlm_blocks': policy '{self.config.policy}' left masks in block {j} "
                f"after its {self.config.steps_per_block} steps; an adaptive policy must commit "
                "at least k positions when asked for k. Fix the policy, or use a non-adaptive one."
            )
        return sizes if adaptive else list(plan.step_means[j])

    def dual_inputs(self, model: Any, x: Tensor, s: int, e: int) -> tuple[Any, Tensor] | None:
        """``dual`` cache inputs of block [s, e), or None (other modes, or no suffix: e = L).

        Returns the block's rotary tables at its natural positions s … e−1 and the (n, L + n)
        bool key mask hiding the stale block rows [s, e) of the (L + B)-row cache.
        """
        L = x.shape[1]
        if self.config.cache != "dual" or e == L:
            return None
        rope = model.rotary_emb.tables(torch.arange(s, e, device=x.device))  # (n, 1, d_h) each
        keys = torch.ones(e - s, L + e - s, dtype=torch.bool, device=x.device)
        keys[:, s:e] = False
        return rope, keys

    def block_forward(
        self,
        model: Any,
        x: Tensor,
        s: int,
        e: int,
        i: int,
        cache: Any,
        dual: tuple[Any, Tensor] | None,
    ) -> tuple[Tensor, CallRecord]:
        """Call i of block [s, e): the block rows' raw logits (b, n, V) and the call's record.

        ``none``: full uncached canvas. Cached modes: call 0 is the full canvas writing all L
        rows' K/V (exact); later calls feed [s, L) against the cached prefix (``prefix``), or
        [s, e) against the cached prefix and suffix (``dual``, K/V at rows [L, L + n)).
        """
        L, n = x.shape[1], e - s
        if self.config.cache == "none":
            return model(x, logits=slice(s, e)), (L, L, L, n)
        if i == 0:
            out = model.forward_cached(x, cache, start=0, causal=False, logits=slice(s, e))
            return out, (L, L, L, n)
        if dual is None:
            out = model.forward_cached(x[:, s:], cache, start=s, causal=False, logits=slice(0, n))
            return out, (L - s, L - s, L, n)
        rope, keys = dual
        out = model.forward_cached(
            x[:, s:e], cache, start=L, causal=False, rope=rope, attn_mask=keys
        )
        return out, (n, n, L + n, n)

    def commit(
        self,
        block: Tensor,
        masked: Tensor,
        logits: Tensor,
        k: Tensor,
        mask_id: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Let the policy choose ≤ k masked block positions per row and write their tokens.

        Args:
            block: (b, n_j) view of the canvas, written in place.
            masked: (b, n_j) bool, its masked positions.
            logits: (b, n_j, V) raw logits of the block rows.
            k: (b,) int64 tokens to commit per row.
            mask_id: the mask token m.
            generator: noise source on the canvas's device.

        Returns:
            (b, n_j) bool, the positions committed.
        """
        cfg = self.config
        if getattr(self.policy, "uses_confidence", True):
            log_p = top_p_filter(
                subs_log_probs(logits, mask_id, cfg.temperature), cfg.top_p, cfg.top_p_convention
            )  # (b, n_j, V) float64
            proposal = gumbel_argmax(log_p, generator)  # (b, n_j)
            keys = policy_keys(self.policy, log_p, proposal)
            chosen = self.policy.select(keys, masked, k, generator) & masked
            block.copy_(torch.where(chosen, proposal, block))
            return chosen
        chosen = self.policy.select(None, masked, k, generator) & masked
        block[chosen] = sample_tokens(
            logits[chosen],
            mask_id,
            generator,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            convention=cfg.top_p_convention,
        )
        return chosen

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """Per block, round(E[calls]) calls (cumulative rounding; see :meth:`block_records`).

        Adaptive policies: min(n_j, T′) calls per block, an upper bound.
        """
        L, T = seq_len, self.config.steps_per_block
        calls: list[CallRecord] = []
        done, acc = 0, 0.0
        for s, e in block_bounds(prompt_len, seq_len, self.config.block_length):
            if self.policy.adaptive:
                acc += min(e - s, T)
            else:
                acc += expected_block_calls(self.schedule, e - s, T, batch_size)
            calls += self.block_records(L, s, e, round(acc) - done)
            done = round(acc)
        return calls

    def block_records(self, L: int, s: int, e: int, count: int) -> list[CallRecord]:
        """The records of ``count`` calls on block [s, e) (see :meth:`block_forward`)."""
        n, mode = e - s, self.config.cache
        if mode == "none" or count < 1:
            return [(L, L, L, n)] * max(count, 0)
        later = (L - s, L - s, L, n) if mode == "prefix" or e == L else (n, n, L + n, n)
        return [(L, L, L, n)] + [later] * (count - 1)
