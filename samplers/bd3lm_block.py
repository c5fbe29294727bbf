"""BD3-LM block sampler: blocks of L′ tokens left to right, each denoised by masked diffusion.

``algorithms.md`` §3.3 (reference: kuleshov-group/bd3lms ``diffusion.py:_semi_ar_sampler``,
``_ddpm_caching_update``). Per block: append L′ masks (BOS at position 0 of block 0 when the
model has one), denoise the block against the clean prefix until no mask is left, then run one
store pass on the clean block so its K/V join the cache.

How many tokens a step commits comes from the schedule, drawn in the plan:

* ``ancestral``: the grid t = 1, 1 − 1/T′, …, 1/T′ with s = t − 1/T′, so the last step fills
  every mask. **Deviation:** the reference walks ``linspace(1, 0, T′)`` with step 1/T′, whose
  final t = 0 divides by zero (any mask left then gets an arbitrary token). Per row and block
  the counts are the schedule's binomial walk; which positions is the ``policy``'s choice
  (``random`` = uniform, i.e. exactly the ancestral update q = (1 − s/t)·p_x0, q[m] = s/t).
* ``first_hitting``: one position per call, chosen by the policy, until the block is clean
  (Zheng et al. 2024; the time t·u^(1/n) is bookkeeping only for a time-agnostic denoiser, so
  it is not drawn).

No-change cache: the block's logits are reused while x is unchanged over the whole batch. The
steps where no row commits anything change nothing, so for non-adaptive policies they are
skipped outright (same tokens in distribution, no call and no noise); every executed step
therefore changes x and costs one call. ``nfe_denoise`` = denoising calls made, which equals the
reference's count of steps that changed x; ``nfe_total`` adds one store pass per block.

Cache modes (all give the same tokens for the same seed):

* ``efficient``: ``model.forward_cached(block, start=P, causal=False)``, L′ queries over P + L′
  keys; store pass = the same call on the clean block with ``return_logits=False``.
* ``reference``: the bd3lms QKV cache (``forward_cached_reference``); every cached row
  re-attends as a query (P + L′ queries), as in the published timings.
* ``none``: the uncached oracle: ``model.forward([prefix ; block])`` under the block-causal
  mask, last L′ logits; no store pass.

Context window (``context_window``): ``full`` (default) attends the whole prefix, however long;
this is the cache the benchmark times and what ``algorithms.md`` §3.3 prescribes for L > 1024.
``sliding`` is the reference's behaviour past the checkpoint's ``model_length`` W (bd3lms
``_semi_ar_sampler`` slides its window so the model never sees more than W rows): block j is
denoised against the last W − L′ clean rows only, re-encoded from their tokens with positions
renumbered from 0 (exactly the uncached oracle on the last W rows). An integer sets W directly
(a multiple of L′). With L ≤ W both give the same tokens. In the cached modes each block past
the window costs one re-encoding pass over its W − L′ context rows instead of the store pass of
the block before it. ``SampleResult.info`` records ``context_window`` and ``context_rows`` (W, or
L for ``full``), so the results row says which was used.

Prompted (a (b, P) prompt, any 0 < P < L; L stays a multiple of L′): the prompt replaces BOS
and fills rows [0, P). The j0 = ⌊P/L′⌋ blocks wholly inside the prompt are never denoised: the
cached modes encode them in one *prefill* pass before the first generated block (rows
[0, j0·L′) under the block-causal pattern, exactly the K/V their per-block store passes would
write; it is the sliding window's re-encoding call with s = 0). A partial last prompt block
(P mod L′ ≠ 0) is denoised like BOS's block 0: its prompt positions are clean and fixed, only
its masked positions are committed, then it is stored. The schedule walks each block's masked
positions only, so E[NFE] counts the L − P generated positions; ``info["prefill_passes"]`` is 1
(cached, j0 > 0) or 0. ``cache: none`` feeds the prompt rows in every block call instead.

None of the reference's stop-and-resample logic (entropy guard) is implemented.
"""

from __future__ import annotations

import math
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
    gumbel_argmax,
    numerics_problems,
    prompt_canvas,
    prompt_info,
    subs_log_probs,
    top_p_filter,
)
from samplers.lazytorch import lazy_torch, no_grad
from samplers.schedules import POLICIES, SCHEDULES, policy_keys

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())

GRID_NOTE = (
    "ancestral grid t = 1 … 1/T' with s = t - 1/T' (final step fills every mask); "
    "reference: linspace(1, 0, T')"
)

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BD3LMConfig:
    """BD3-LM block sampler settings.

    Attributes:
        block_size: L′, tokens per block; must divide L and equal the model's ``block_size``
            when the checkpoint records one.
        steps_per_block: T′, grid steps per block (``ancestral`` only; ``first_hitting``
            loops until the block is clean).
        mode: ``ancestral`` or ``first_hitting``.
        cache: ``efficient`` (block-query K/V cache), ``reference`` (bd3lms QKV cache) or
            ``none`` (uncached oracle).
        schedule: name in ``SCHEDULES``; the per-block count walk of ``ancestral``.
        policy: name in ``POLICIES``; which masked positions a step commits.
        temperature: divides the logits before sampling.
        top_p: nucleus mass in (0, 1]; 1 disables nucleus filtering.
        top_p_convention: ``hf`` or ``strict`` (bd3lms uses ``strict``).
        profile: network-only timing: the same calls and shapes on placeholder tokens.
        context_window: ``full`` (whole prefix), ``sliding`` (the reference's window of the
            checkpoint's ``model_length`` rows, positions renumbered) or an integer W (a
            multiple of ``block_size``); see the module docstring.
    """

    block_size: int = 4
    steps_per_block: int = 16
    mode: Literal["ancestral", "first_hitting"] = "ancestral"
    cache: Literal["efficient", "reference", "none"] = "efficient"
    schedule: str = "loglinear"
    policy: str = "random"
    temperature: float = 1.0
    top_p: float = 1.0
    top_p_convention: Literal["hf", "strict"] = "hf"
    profile: bool = False
    context_window: str | int = "full"

    def problems(self) -> list[str]:
        """Every problem with these values, as sentences (empty when valid)."""
        out = list(numerics_problems(self))
        cw = self.context_window
        if isinstance(cw, bool) or not isinstance(cw, (str, int)):
            out.append(f"'context_window' is {cw!r}; allowed: 'full', 'sliding' or an integer.")
        elif isinstance(cw, str) and cw not in ("full", "sliding"):
            out.append(f"'context_window' is {cw!r}; allowed: 'full', 'sliding' or an integer.")
        elif isinstance(cw, int) and (
            cw < 1
            or (isinstance(self.block_size, int) and self.block_size > 0 and cw % self.block_size)
        ):
            out.append(
                f"'context_window' is {cw}; an integer window must be a positive multiple of "
                f"'block_size' {self.block_size}."
            )
        for name in ("block_size", "steps_per_block"):
            val = getattr(self, name)
            if not isinstance(val, int) or val < 1:
                out.append(f"'{name}' is {val!r}; it must be an integer >= 1.")
        if self.mode not in ("ancestral", "first_hitting"):
            out.append(f"'mode' is {self.mode!r}; allowed: 'ancestral', 'first_hitting'.")
        if self.cache not in ("efficient", "reference", "none"):
            out.append(f"'cache' is {self.cache!r}; allowed: 'efficient', 'reference', 'none'.")
        if self.schedule not in SCHEDULES:
            out.append(f"'schedule': {SCHEDULES.unknown_message(self.schedule)}")
        if self.policy not in POLICIES:
            out.append(f"'policy': {POLICIES.unknown_message(self.policy)}")
        elif self.profile and POLICIES.get(self.policy).adaptive:
            out.append(
                f"'profile' is true with adaptive policy '{self.policy}': its calls depend on "
                "the model's outputs, so a network-only replay is not faithful. Set profile: "
                "false, or use a non-adaptive policy such as 'random'."
            )
        return out


# --------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------


@dataclass
class BD3Plan:
    """Everything decided before the timed loop.

    Attributes:
        batch_size: b.
        seq_len: L.
        block_size: L′.
        bos: BOS id written at position 0, or ``None``.
        steps: per block, the k of each step to run: (b,) int64 on the model's device (tokens
            row r commits). Non-adaptive policies list only steps where some row commits.
        step_means: per block, the batch-mean of each k (for ``SampleResult.step_sizes``).
        cache: ``KVCache`` / ``QKVCache`` of L rows, or ``None`` (``cache: none``).
        mask: the (L, L) block-causal pattern for the uncached oracle, else ``None``.
        nfe_denoise_expected: analytic E[denoising calls] (NaN for adaptive policies).
        info: extra scalars copied into ``SampleResult.info``.
        window: W, the most rows a call sees (context plus the block); ``seq_len`` for
            ``context_window: full``. Default 0 means ``seq_len``.
        reencode_mask: the (W − L′, W − L′) block-causal pattern of the efficient cache's
            re-encoding and prefill passes (sliced to each pass's rows), when the window slides
            or a prompt fills whole blocks.
        prompt: (b, P) int64 fixed prefix, or ``None``.
    """

    batch_size: int
    seq_len: int
    block_size: int
    bos: int | None
    steps: list[list[Tensor]]
    step_means: list[list[float]]
    cache: Any | None
    mask: Tensor | None
    nfe_denoise_expected: float
    info: dict[str, Any] = field(default_factory=dict)
    window: int = 0
    reencode_mask: Tensor | None = None
    prompt: Tensor | None = None

    @property
    def n_blocks(self) -> int:
        """N_b = L / L′."""
        return self.seq_len // self.block_size

    @property
    def first_block(self) -> int:
        """j0 = ⌊P/L′⌋, the first block with a masked position (0 without a prompt)."""
        return 0 if self.prompt is None else self.prompt.shape[1] // self.block_size

    def window_start(self, j: int) -> int:
        """First row block j's calls see: max(0, (j + 1)·L′ − W)."""
        return window_start(j, self.block_size, self.window or self.seq_len)


def window_start(j: int, block_size: int, window: int) -> int:
    """First row that block j sees with a W-row window: max(0, (j + 1)·L′ − W)."""
    return max(0, (j + 1) * block_size - window)


def context_rows(cfg: BD3LMConfig, model_config: Any, seq_len: int) -> int:
    """W for ``cfg.context_window`` (``full``: L; ``sliding``: the model's ``model_length``)."""
    cw = cfg.context_window
    if cw == "full":
        return seq_len
    if cw == "sliding":
        trained = getattr(model_config, "model_length", None)
        return int(trained) if trained else seq_len
    return int(cw)


def host_generator(generator: torch.Generator) -> torch.Generator:
    """A CPU generator for the schedule's binomial draws, seeded from ``generator`` if needed."""
    if generator.device.type == "cpu":
        return generator
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return torch.Generator().manual_seed(int(seed.item()))


def masked_per_block(
    seq_len: int, block_size: int, bos: int | None, prompt_len: int = 0
) -> list[int]:
    """Masks each block starts with: L′ minus its fixed positions.

    The fixed prefix is the prompt's P positions when ``prompt_len`` > 0 (BOS is then not
    written), else position 0 when BOS is fixed: [L′ − 1, L′, …].
    """
    fixed = prompt_len if prompt_len > 0 else int(bos is not None)
    return [
        min(block_size, max(0, (j + 1) * block_size - fixed)) for j in range(seq_len // block_size)
    ]


def block_counts(
    schedule: Any, n_masked: int, steps_per_block: int, batch_size: int, gen: torch.Generator
) -> Tensor:
    """One independent count walk over the T′ grid per row; the last step takes any remainder.

    Uses the schedule's optional vectorised ``counts_rows`` when it has one (loglinear), else
    calls ``counts`` once per row.

    Returns:
        (b, T′) int64 on the CPU; each row sums to ``n_masked``.
    """
    fast = getattr(schedule, "counts_rows", None)
    if fast is not None:
        counts = fast(n_masked, steps_per_block, batch_size, gen).to(torch.long)
    else:
        counts = torch.tensor(
            [
                [int(v) for v in schedule.counts(n_masked, steps_per_block, gen, 1.0)]
                for _ in range(batch_size)
            ],
            dtype=torch.long,
        ).view(batch_size, steps_per_block)
    counts[:, -1] += n_masked - counts.sum(-1)
    return counts


def reveal_probabilities(schedule: Any, steps_per_block: int) -> Tensor:
    """q_i = P(a token is committed at grid step i), (T′,) float64; the last absorbs 1 − Σq.

    The binomial walk telescopes to q_i = (α_{s_i} − α_{t_i}) / (1 − α_1); loglinear: 1/T′.
    """
    t = torch.arange(steps_per_block, 0, -1, dtype=torch.float64) / steps_per_block
    a_t, a_s = schedule.alpha(t), schedule.alpha(t - 1.0 / steps_per_block)
    q = ((a_s - a_t) / (1.0 - schedule.alpha(torch.ones((), dtype=torch.float64)))).clamp(0, 1)
    q[-1] += (1.0 - q.sum()).clamp(min=0.0)
    return q


def expected_denoise_calls(
    schedule: Any, cfg: BD3LMConfig, batch_size: int, masked: list[int]
) -> float:
    """E[denoising calls] = Σ_blocks Σ_i [1 − (1 − q_i)^(b·n_j)]; first-hitting: Σ n_j.

    A grid step costs a call iff at least one of the b·n_j masked tokens of the batch is
    committed there (the batch version of published-numbers.md §3.3's per-block expectation;
    loglinear: T′(1 − (1 − 1/T′)^(b·n_j))).
    """
    if cfg.mode == "first_hitting":
        return float(sum(masked))
    if POLICIES.get(cfg.policy).adaptive:
        return float("nan")
    q = reveal_probabilities(schedule, cfg.steps_per_block)
    return float(sum((1.0 - (1.0 - q) ** (batch_size * n)).sum() for n in masked if n > 0))


# --------------------------------------------------------------------------------------------
# Execute: one block at a time
# --------------------------------------------------------------------------------------------


def block_logits(model: Any, x: Tensor, P: int, plan: BD3Plan, cache_mode: str) -> Tensor:
    """Denoiser logits for the block x[:, P : P+L′] given the clean prefix, (b, L′, V).

    With a sliding window the prefix is rows [s, P), s = ``plan.window_start``; cached modes hold
    them at cache rows [0, P − s) (positions renumbered), the oracle feeds x[:, s : P+L′].
    """
    Lb = plan.block_size
    s = plan.window_start(P // Lb)
    if cache_mode == "efficient":
        return model.forward_cached(x[:, P : P + Lb], plan.cache, start=P - s, causal=False)
    if cache_mode == "reference":
        return model.forward_cached_reference(x[:, P : P + Lb], plan.cache, start=P - s)
    n = P + Lb - s
    return model.forward(x[:, s : P + Lb], attn_mask=plan.mask[:n, :n], logits=Lb)


def reencode_context(model: Any, x: Tensor, j: int, plan: BD3Plan, cache_mode: str) -> CallRecord:
    """Sliding window: rebuild cache rows [0, P − s) from the clean rows x[:, s : P].

    One pass under the block-causal pattern with positions 0 … P − s − 1, so the cache holds
    exactly what the uncached oracle computes on the window (s and P are multiples of L′).
    """
    Lb = plan.block_size
    P, s = j * Lb, plan.window_start(j)
    ctx = x[:, s:P]
    n = P - s
    if cache_mode == "efficient":
        model.forward_cached(
            ctx, plan.cache, start=0, causal=False, attn_mask=plan.reencode_mask[:n, :n],
            return_logits=False,
        )  # fmt: skip
    else:
        model.forward_cached_reference(ctx, plan.cache, start=0, return_logits=False)
    return (n, n, n, 0)


def block_call(P: int, Lb: int, cache_mode: str, head: bool) -> CallRecord:
    """(fed, queries, keys, head rows) of one block call at prefix length P."""
    if cache_mode == "efficient":
        return (Lb, Lb, P + Lb, Lb if head else 0)
    if cache_mode == "reference":
        return (Lb, P + Lb, P + Lb, Lb if head else 0)
    return (P + Lb, P + Lb, P + Lb, Lb)


def commit(
    block: Tensor,
    logits: Tensor,
    k: Tensor,
    policy: Any,
    cfg: BD3LMConfig,
    mask_id: int,
    generator: torch.Generator,
) -> Tensor:
    """Propose a token for every block position, let the policy pick k masked ones, write them.

    SUBS, top-p and Gumbel-max in float64 over (b, L′, V); clean positions are never changed.

    Returns:
        (b, L′) bool, the positions committed now.
    """
    lp = top_p_filter(
        subs_log_probs(logits, mask_id, cfg.temperature), cfg.top_p, cfg.top_p_convention
    )  # (b, L′, V) float64
    proposal = gumbel_argmax(lp, generator)  # (b, L′)
    keys = policy_keys(policy, lp, proposal)  # (b, L′): confidence, or the policy's score
    masked = block == mask_id
    chosen = policy.select(keys, masked, k, generator) & masked
    block.copy_(torch.where(chosen, proposal, block))
    return chosen


def denoise_block(
    model: Any,
    x: Tensor,
    j: int,
    plan: BD3Plan,
    cfg: BD3LMConfig,
    policy: Any,
    generator: torch.Generator,
    calls: list[CallRecord],
) -> list[float]:
    """Denoise block j of x (b, L) in place; returns the batch-mean tokens committed per call.

    Non-adaptive policies run exactly the plan's steps, each one changing x (no host sync).
    Adaptive ones may commit nothing (the logits are then reused: the no-change cache) or
    fewer than asked; extra steps then ask for every remaining mask until the block is clean.
    """
    Lb, mask_id = plan.block_size, model.config.mask_id
    P = j * Lb
    block = x[:, P : P + Lb]  # a view: commits write into x
    logits, sizes = None, []
    steps = list(plan.steps[j])
    extra = 0
    while steps:
        k = steps.pop(0)
        if logits is None:
            logits = block_logits(model, x, P, plan, cfg.cache)
            calls.append(block_call(P - plan.window_start(j), Lb, cfg.cache, head=True))
        if cfg.profile:
            logits = None
            continue
        chosen = commit(block, logits, k, policy, cfg, mask_id, generator)
        if not policy.adaptive:
            logits = None
            continue
        if bool(chosen.any()):
            logits = None
            sizes.append(float(chosen.sum(-1).double().mean()))
        if not steps and bool((block == mask_id).any()):
            extra += 1
            if extra > Lb:
                raise SamplerError(
                    f"sampler 'bd3lm': policy '{cfg.policy}' left masks in block {j} after "
                    f"{extra - 1} extra steps that asked for every remaining mask. Use a "
                    "policy that commits at least one masked position when asked."
                )
            steps.append((block == mask_id).sum(-1))
    return sizes if policy.adaptive else list(plan.step_means[j])


def store_block(model: Any, x: Tensor, j: int, plan: BD3Plan, cache_mode: str) -> CallRecord:
    """Write the clean block's K/V (or QKV) at cache rows [P − s, P − s + L′): the store pass."""
    Lb = plan.block_size
    P = j * Lb
    at = P - plan.window_start(j)
    if cache_mode == "efficient":
        model.forward_cached(
            x[:, P : P + Lb], plan.cache, start=at, causal=False, return_logits=False
        )
    else:
        model.forward_cached_reference(x[:, P : P + Lb], plan.cache, start=at, return_logits=False)
    return block_call(at, Lb, cache_mode, head=False)


def sliding_passes(
    j: int, n_blocks: int, block_size: int, window: int, first_block: int = 0
) -> tuple[bool, bool]:
    """(encode the context before block j, store after block j) for the cached modes.

    Block j re-encodes its context when its window no longer starts at row 0, and the first
    generated block j0 > 0 encodes the prompt's whole blocks (the prefill); the store pass
    after block j is skipped when the next block will re-encode anyway (the last block always
    stores, as with a full window).
    """
    reencode = window_start(j, block_size, window) > 0 or (j == first_block > 0)
    nxt = j + 1 < n_blocks and window_start(j + 1, block_size, window) > 0
    return reencode, not nxt


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------


@SAMPLERS.register("bd3lm")
class BD3LMSampler(PlanExecute):
    """BD3-LM semi-autoregressive block sampler with exact block caches."""

    name: ClassVar[str] = "bd3lm"
    families: ClassVar[tuple[str, ...]] = ("bd3lm",)
    config_class: ClassVar[type] = BD3LMConfig

    def __init__(self, config: BD3LMConfig | None = None) -> None:
        cfg = self.config = check_config(self.name, config or BD3LMConfig())
        self.schedule = SCHEDULES.build(cfg.schedule)
        self.policy = POLICIES.build(cfg.policy)

    def cache_kind(self) -> str | None:
        """The cache this configuration keeps, for the analytic memory column.

        ``kv`` (efficient), ``qkv`` (reference) or none.
        """
        return {"efficient": "kv", "reference": "qkv"}.get(self.config.cache)

    def _check_sizes(self, model_config: Any, seq_len: int) -> None:
        Lb = self.config.block_size
        if seq_len % Lb:
            raise SamplerError(
                f"sampler 'bd3lm': 'block_size' {Lb} does not divide seq_len {seq_len}. "
                f"Pick a block_size that divides {seq_len}, or change seq_len."
            )
        trained = getattr(model_config, "block_size", None)
        if trained is not None and trained != Lb:
            raise SamplerError(
                f"sampler 'bd3lm': 'block_size' is {Lb} but the model was trained with block "
                f"size {trained}. Set block_size: {trained}, or load a checkpoint trained with "
                f"block size {Lb}."
            )
        W = context_rows(self.config, model_config, seq_len)
        if W < seq_len and (W % Lb or W < Lb):
            raise SamplerError(
                f"sampler 'bd3lm': context_window {self.config.context_window!r} gives a window "
                f"of {W} rows, which is not a multiple of block_size {Lb}. Use context_window: "
                f"full, or an integer multiple of {Lb}."
            )

    def _step_plan(
        self, batch_size: int, masked: list[int], generator: torch.Generator, device: Any
    ) -> tuple[list[list[Tensor]], list[list[float]]]:
        """Per block, the k tensor of each step to run and its batch mean."""
        cfg, adaptive = self.config, self.policy.adaptive
        gen = host_generator(generator) if cfg.mode == "ancestral" else None
        steps, means = [], []
        for n in masked:
            if n == 0:
                counts = torch.zeros(batch_size, 0, dtype=torch.long)
            elif cfg.mode == "first_hitting":
                counts = torch.ones(batch_size, n, dtype=torch.long)
            else:
                counts = block_counts(self.schedule, n, cfg.steps_per_block, batch_size, gen)
            keep = [i for i in range(counts.shape[1]) if adaptive or bool(counts[:, i].any())]
            steps.append([counts[:, i].to(device) for i in keep])
            means.append([float(counts[:, i].double().mean()) for i in keep])
        return steps, means

    @no_grad
    def plan(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> BD3Plan:
        """Draw every block's step counts and allocate the cache (untimed).

        ``prompt``: (b, P) int64 fixed prefix (any 0 < P < L), or ``None`` (BOS, if the model
        has one); see the module docstring.

        Raises:
            SamplerError: wrong model family, sizes < 1, block_size not dividing seq_len, a
                block_size other than the one the model was trained with, or a bad prompt.
        """
        check_family(self, model)
        check_common(batch_size, seq_len)
        self._check_sizes(model.config, seq_len)
        cfg, Lb, dev = self.config, self.config.block_size, generator.device
        prompt = check_prompt(prompt, batch_size, seq_len, model.config, dev)
        P = 0 if prompt is None else prompt.shape[1]
        bos = model.config.bos_index if prompt is None else None
        masked = masked_per_block(seq_len, Lb, bos, P)
        steps, means = self._step_plan(batch_size, masked, generator, dev)
        W = context_rows(cfg, model.config, seq_len)
        rows = min(W, seq_len)
        cache = mask = reencode_mask = None
        if cfg.cache == "efficient":
            cache = model.new_kv_cache(batch_size, rows)
            if W < seq_len or P >= Lb:
                reencode_mask = model.block_causal_mask(rows - Lb, Lb, dev)
        elif cfg.cache == "reference":
            cache = model.new_qkv_cache(batch_size, rows, Lb)
        else:
            mask = model.block_causal_mask(rows, Lb, dev)
        expected = expected_denoise_calls(self.schedule, cfg, batch_size, masked)
        info = {"mode": cfg.mode, "cache": cfg.cache, "policy": cfg.policy, "bos": bos}
        cw = cfg.context_window
        info["context_window"] = cw if isinstance(cw, str) else "sliding"
        info["context_rows"] = rows  # W, or L when the window never slides
        info["context_slides"] = W < seq_len
        info.update(prompt_info(P, seq_len))
        if cfg.mode == "ancestral":
            info["grid"] = GRID_NOTE
        return BD3Plan(
            batch_size, seq_len, Lb, bos, steps, means, cache, mask, expected, info,
            window=rows, reencode_mask=reencode_mask, prompt=prompt,
        )  # fmt: skip

    @no_grad
    def execute(self, model: Any, plan: BD3Plan, *, generator: torch.Generator) -> SampleResult:
        """The timed loop over blocks; replayable (the cache is reset first).

        Raises:
            SamplerError: an adaptive policy left masks in a block (names the block).
        """
        cfg = self.config
        if plan.cache is not None:
            plan.cache.reset()
        x = prompt_canvas(
            plan.prompt, plan.batch_size, plan.seq_len, model.config.mask_id, generator.device
        )
        if plan.bos is not None:
            x[:, 0] = plan.bos
        calls: list[CallRecord] = []
        sizes: list[float] = []
        stores = reencodes = prefills = 0
        W, j0 = plan.window or plan.seq_len, plan.first_block
        for j in range(j0, plan.n_blocks):
            reencode, store = sliding_passes(j, plan.n_blocks, plan.block_size, W, j0)
            if plan.cache is not None and reencode:
                calls.append(reencode_context(model, x, j, plan, cfg.cache))
                prefills += j == j0
                reencodes += j > j0
            sizes += denoise_block(model, x, j, plan, cfg, self.policy, generator, calls)
            if plan.cache is not None and store:
                calls.append(store_block(model, x, j, plan, cfg.cache))
                stores += 1
        nfe_denoise = len(calls) - stores - reencodes - prefills
        return SampleResult(
            tokens=x,
            nfe_denoise=nfe_denoise,
            nfe_total=len(calls),
            token_forwards=sum(c[0] for c in calls),
            step_sizes=sizes,
            calls=calls,
            info={
                **plan.info,
                "nfe_expected": plan.nfe_denoise_expected + stores + reencodes + prefills,
                "nfe_denoise_expected": plan.nfe_denoise_expected,
                "store_passes": stores,
                "reencode_passes": reencodes,
                "prefill_passes": prefills,
                "profile": bool(cfg.profile),
            },
        )

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """Per block, round(E[denoising calls]) block calls (cumulative rounding), then a store.

        With ``prompt_len`` P: the prefill pass, then the blocks from j0 = ⌊P/L′⌋ on.
        """
        self._check_sizes(model_config, seq_len)
        cfg, Lb = self.config, self.config.block_size
        bos = getattr(model_config, "bos_index", None)
        masked = masked_per_block(seq_len, Lb, bos, prompt_len)
        W = min(context_rows(cfg, model_config, seq_len), seq_len)
        j0 = prompt_len // Lb
        calls: list[CallRecord] = []
        done, acc = 0, 0.0
        for j, n in enumerate(masked):
            if j < j0:
                continue
            at = j * Lb - window_start(j, Lb, W)
            reencode, store = sliding_passes(j, len(masked), Lb, W, j0)
            if cfg.cache != "none" and reencode:
                calls.append((at, at, at, 0))
            e = expected_denoise_calls(self.schedule, cfg, batch_size, [n])
            acc += n if math.isnan(e) else e  # adaptive: at most one call per token
            calls += [block_call(at, Lb, cfg.cache, head=True)] * (round(acc) - done)
            done = round(acc)
            if cfg.cache != "none" and store:
                calls.append(block_call(at, Lb, cfg.cache, head=False))
        return calls
