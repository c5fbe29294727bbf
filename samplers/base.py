"""The sampler protocol, its work record, and the sampling numerics every sampler shares.

A sampler is built from a frozen config dataclass and driven in two phases so that the runner can
keep schedule work out of the timed region (``measurement.md`` §1):

1. ``plan(model, batch_size=, seq_len=, generator=, prompt=None)``: everything that does not
   depend on the network's outputs: step sizes drawn from the schedule, permutations π, rotary
   tables gathered by π, cache allocation. Untimed. A plan can be executed many times (warm-up
   and repeats replay exactly the same shapes).
2. ``execute(model, plan, generator=)``: the network calls and the sampling arithmetic. Timed.

``sample`` = ``plan`` + ``execute``. Samplers depend only on the denoiser's methods
(``forward``, ``forward_cached``, ``forward_cached_reference``, ``new_kv_cache``,
``new_qkv_cache``, ``config``) and never on the runner.

Prompted (conditional) generation. ``prompt`` is a (b, P) integer tensor, one prompt per batch
row, 0 < P < L, ids in [0, V) and never the mask id. ``seq_len`` L is the whole canvas: positions
[0, P) hold the prompt and L − P positions are generated after it. The prompt is never masked,
never resampled, and comes back unchanged in ``SampleResult.tokens[:, :P]``. Every row of one
call has the same P, so **the runner buckets prompts by token length** and makes one call (one
plan) per bucket; a plan is built for its prompt and replays it. ``prompt=None`` is the
unconditional run, exactly as before prompts existed (same tokens and calls for the same seed;
``tests/samplers/test_prompt.py`` pins it). Every result records ``info["prompt_len"]`` (P, 0
without a prompt) and ``info["gen_tokens"]`` (L − P, tokens generated per row); throughput is
``batch_size · gen_tokens / wall time`` (generated tokens only). The schedule, the NFE and
``expected_calls(..., prompt_len=P)`` count the L − P generated positions only; the call records
still count every row fed (a prompt costs compute). How each sampler uses the prompt (a prefill
call, a cache store pass, the first positions of π) is in its module docstring and in
``samplers/__init__.py``. A sampler that would put BOS at position 0 does not when a prompt is
given: the prompt is the whole prefix, so it should start with BOS if the model expects one.

Numerics (``algorithms.md`` §4): mask logit → −∞ before softmax and top-p; softmax, top-p and
Gumbel noise in float64; noise drawn on the model's device, sized to what is sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from dlmcore.configio import ConfigError
from dlmcore.errors import UserError
from dlmcore.registry import Registry
from samplers.lazytorch import lazy_torch

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())

CallRecord = tuple[int, int, int, int]
"""One network call, per batch row: (fed tokens, attention query rows, key rows, head rows).

* fed: tokens pushed through the blocks' projections and MLPs;
* queries × keys: attention score entries per layer and head (dense; masking does not save work
  in SDPA's math path);
* head rows: rows given the output head (V-wide logits).
The cost model turns these into FLOPs and bytes; ``token_forwards`` is Σ fed.
"""


@dataclass
class SampleResult:
    """What a sampler returns.

    Attributes:
        tokens: (b, L) int64 ids in natural order, the prompt (if any) unchanged in [0, P); no
            mask left (in profile mode the tokens are placeholders and may be masks).
        nfe_denoise: reference-compatible count of denoising forwards (measurement.md §6).
        nfe_total: every network call, store passes included.
        token_forwards: Σ over calls of the tokens fed, per sequence.
        step_sizes: tokens committed by each denoising call, per sequence (for MDLM, the mean over
            the batch of tokens committed at each call).
        calls: one :data:`CallRecord` per network call.
        info: extra scalars, e.g. ``nfe_expected`` (analytic), ``nfe_profile_sim``; always
            ``prompt_len`` (P, 0 without a prompt) and ``gen_tokens`` (L − P).
    """

    tokens: Tensor
    nfe_denoise: int
    nfe_total: int
    token_forwards: int
    step_sizes: list[float] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Sampler(Protocol):
    """A registered sampler: ``name``, accepted model ``families`` and a frozen ``config``."""

    name: ClassVar[str]
    families: ClassVar[tuple[str, ...]]
    config_class: ClassVar[type]
    config: Any

    def plan(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> Any:
        """Untimed preparation; see module docstring. ``prompt``: (b, P) int64 or ``None``."""
        ...

    def execute(self, model: Any, plan: Any, *, generator: torch.Generator) -> SampleResult:
        """The timed part: network calls and sampling arithmetic."""
        ...

    def sample(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> SampleResult:
        """``plan`` then ``execute``."""
        ...

    def cache_kind(self) -> str | None:
        """The cache this configuration keeps: ``kv``, ``qkv``, ``px0`` or ``None``."""
        ...

    def expected_calls(
        self, model_config: Any, *, batch_size: int, seq_len: int, prompt_len: int = 0
    ) -> list[CallRecord]:
        """The analytic expectation of ``SampleResult.calls``, without running the network.

        For the cost model's dry-run prediction; random counts are replaced by expectations.
        ``prompt_len`` P: the calls of a run with a (b, P) prompt (0: unconditional).
        """
        ...


class PlanExecute:
    """``sample`` = ``plan`` + ``execute``, shared by every built-in sampler (inherit it)."""

    def sample(
        self,
        model: Any,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
    ) -> SampleResult:
        """``plan`` then ``execute``."""
        plan = self.plan(  # type: ignore[attr-defined]
            model, batch_size=batch_size, seq_len=seq_len, generator=generator, prompt=prompt
        )
        return self.execute(model, plan, generator=generator)  # type: ignore[attr-defined]


SAMPLERS: Registry[type] = Registry("sampler")
"""Sampler classes by name; filled by the explicit imports in ``samplers/__init__.py``."""


class SamplerError(UserError, ValueError):
    """A sampler cannot run with this model, size or config (message says what to change)."""


def check_family(sampler: Any, model: Any, source: str | None = None) -> None:
    """Raise :class:`SamplerError` if ``model``'s family is not one ``sampler`` accepts."""
    fam = model.config.family
    if fam not in sampler.families:
        where = f"checkpoint '{source}'" if source else "the model"
        raise SamplerError(
            f"sampler '{sampler.name}' needs a model of family {' or '.join(sampler.families)}; "
            f"{where} is family '{fam}'. Load a {sampler.families[0]} checkpoint, or pick a "
            f"sampler for '{fam}' (dlmbench ls samplers)."
        )


def check_config(name: str, config: Any) -> Any:
    """Raise one :class:`ConfigError` listing every problem of a sampler ``config``; return it."""
    probs = config.problems()
    if probs:
        raise ConfigError(probs, f"Invalid config for sampler '{name}'")
    return config


def check_common(batch_size: int, seq_len: int) -> None:
    """Validate the per-call sizes shared by all samplers."""
    problems = []
    if int(batch_size) < 1:
        problems.append(f"batch_size is {batch_size}; it must be >= 1")
    if int(seq_len) < 1:
        problems.append(f"seq_len is {seq_len}; it must be >= 1")
    if problems:
        raise SamplerError("; ".join(problems) + ".")


def check_prompt(
    prompt: Any, batch_size: int, seq_len: int, model_config: Any, device: Any = None
) -> Tensor | None:
    """Validate a prompt (see the module docstring) and return it as int64 on ``device``.

    Args:
        prompt: (b, P) integer tensor, or ``None`` (unconditional: returned as ``None``).
        batch_size: b; the prompt must have one row per batch row.
        seq_len: L, the whole canvas; 0 < P < L.
        model_config: gives ``vocab_size`` and ``mask_id``.
        device: where the sampler's canvas lives (default: the prompt's device).

    Raises:
        SamplerError: naming what was received, what is allowed and what to do.
    """
    if prompt is None:
        return None
    fix = "Pass prompt= as a (batch_size, P) int64 tensor of token ids, one prompt per row."
    if not isinstance(prompt, torch.Tensor):
        raise SamplerError(f"prompt is a {type(prompt).__name__}; it must be a tensor. {fix}")
    if prompt.dim() != 2:
        raise SamplerError(f"prompt has shape {tuple(prompt.shape)}; it must be 2-D. {fix}")
    if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
        raise SamplerError(f"prompt has dtype {prompt.dtype}; it must hold integer ids. {fix}")
    b, P = prompt.shape
    if b != batch_size:
        raise SamplerError(
            f"prompt has {b} rows but batch_size is {batch_size}; give one prompt per row "
            "(bucket prompts of equal token length into one call)."
        )
    if not 0 < P < seq_len:
        raise SamplerError(
            f"prompt length is {P} tokens with seq_len {seq_len}; it must satisfy "
            f"0 < P < seq_len (seq_len is the whole canvas, prompt + generated). Use a seq_len "
            f"above {P}, or pass prompt=None for unconditional generation."
        )
    V, mask_id = int(model_config.vocab_size), model_config.mask_id  # None: no mask token
    bad = (prompt < 0) | (prompt >= V)
    if mask_id is not None:
        bad |= prompt == int(mask_id)
    if bool(bad.any()):
        r, c = (int(i) for i in bad.nonzero()[0])
        raise SamplerError(
            f"prompt[{r}, {c}] is token id {int(prompt[r, c])}; prompt ids must lie in "
            f"[0, {V}) and never be the mask id {mask_id}. Re-tokenize the prompt with the "
            "model's tokenizer."
        )
    return prompt.to(device=device if device is not None else prompt.device, dtype=torch.long)


def prompt_info(prompt_len: int, seq_len: int) -> dict[str, int]:
    """``info`` entries every result carries: ``prompt_len`` P and ``gen_tokens`` L − P."""
    return {"prompt_len": int(prompt_len), "gen_tokens": int(seq_len - prompt_len)}


def prompt_canvas(
    prompt: Tensor | None, batch_size: int, seq_len: int, mask_id: int, device: Any
) -> Tensor:
    """(b, L) int64 canvas: the prompt in [0, P), masks after it (all masks without a prompt)."""
    x = torch.full((batch_size, seq_len), mask_id, dtype=torch.long, device=device)
    if prompt is not None:
        x[:, : prompt.shape[1]] = prompt
    return x


# --------------------------------------------------------------------------------------------
# Sampling numerics
# --------------------------------------------------------------------------------------------

TopPConvention = Literal["hf", "strict"]


def subs_log_probs(logits: Tensor, mask_id: int, temperature: float = 1.0) -> Tensor:
    """SUBS zero-masking: logit[m] ← −∞, then log-softmax in float64.

    Args:
        logits: (…, V) raw logits, any float dtype.
        mask_id: the mask token m.
        temperature: divides the logits (1 = unchanged).

    Returns:
        (…, V) float64 log-probabilities with exactly zero mass on m.
    """
    x = logits.to(torch.float64, copy=True)  # never write the mask logit into the caller's tensor
    if temperature != 1.0:
        x = x / temperature
    x[..., mask_id] = float("-inf")
    return torch.log_softmax(x, dim=-1)


def top_p_filter(log_probs: Tensor, top_p: float, convention: TopPConvention = "hf") -> Tensor:
    """Nucleus filtering in float64, renormalised.

    ``hf`` (Eso-LMs, DUO) keeps the smallest prefix of the sorted distribution whose mass reaches
    ``top_p``, i.e. it keeps the token that crosses p. ``strict`` (bd3lms) keeps the tokens whose
    cumulative mass is ≤ p, plus the top-1.

    Args:
        log_probs: (…, V) float64 log-probabilities.
        top_p: in (0, 1]; 1 returns the input unchanged.
        convention: ``hf`` or ``strict``.

    Returns:
        (…, V) float64 log-probabilities, −∞ outside the nucleus.
    """
    if top_p >= 1.0:
        return log_probs
    lp = log_probs.to(torch.float64)
    sorted_lp, idx = torch.sort(lp, dim=-1, descending=True)
    cum = sorted_lp.exp().cumsum(dim=-1)
    if convention == "hf":
        remove = (cum - sorted_lp.exp()) >= top_p  # mass strictly before this token already ≥ p
    else:
        remove = cum > top_p
        remove[..., 0] = False
    sorted_lp = sorted_lp.masked_fill(remove, float("-inf"))
    out = torch.full_like(lp, float("-inf")).scatter(-1, idx, sorted_lp)
    return torch.log_softmax(out, dim=-1)


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator, device: Any) -> Tensor:
    """Float64 Gumbel(0, 1) noise −log(−log u), u ~ U(0, 1), drawn on ``device``."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    e = -torch.log(u.clamp_min(tiny))  # Exp(1), > 0
    return -torch.log(e.clamp_min(tiny))


def gumbel_argmax(log_probs: Tensor, generator: torch.Generator) -> Tensor:
    """Sample from categorical(exp(log_probs)) by float64 Gumbel-max: (…, V) → (…) int64.

    On CPU the noise is drawn and added in cache-sized chunks of rows (see
    :func:`sample_tokens`); the draws, hence the tokens, equal one big draw.
    """
    shape = log_probs.shape
    rows = log_probs.reshape(-1, shape[-1])
    out = []
    for chunk in rows.split(_chunk_rows(log_probs)):
        g = gumbel_noise(tuple(chunk.shape), generator, chunk.device)
        out.append(torch.argmax(chunk.to(torch.float64) + g, dim=-1))
    return (torch.cat(out) if out else rows.new_empty(0, dtype=torch.long)).reshape(shape[:-1])


def _chunk_rows(x: Tensor) -> int:
    """Rows of (…, V) per chunk: ≈ :data:`SAMPLE_CHUNK_ELEMENTS` values on CPU, all on GPU."""
    n_rows = max(1, x.numel() // max(1, x.shape[-1]))
    if x.device.type != "cpu":  # GPU: one launch per op beats cache-sized chunks
        return n_rows
    return max(1, SAMPLE_CHUNK_ELEMENTS // max(1, x.shape[-1]))


def sample_tokens(
    logits: Tensor,
    mask_id: int,
    generator: torch.Generator,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    convention: TopPConvention = "hf",
) -> Tensor:
    """SUBS → temperature → top-p → Gumbel-max, all in float64: (…, V) → (…) int64.

    On CPU, rows are processed in chunks of about :data:`SAMPLE_CHUNK_ELEMENTS` values, in
    row-major order, so the float64 temporaries stay in cache: a (32, 16, 8193) call took 223 µs
    per token unchunked, 60 µs chunked (54 µs for (32, 1, 8193)) on a 2-core CPU. The Gumbel
    noise is drawn chunk by chunk from the same generator in the same order, so the tokens are
    identical to an unchunked draw (tested).
    """
    shape = logits.shape
    rows = logits.reshape(-1, shape[-1])
    step = _chunk_rows(logits)
    out = [
        gumbel_argmax(
            top_p_filter(subs_log_probs(chunk, mask_id, temperature), top_p, convention),
            generator,
        )
        for chunk in rows.split(step)
    ]
    return (torch.cat(out) if out else rows.new_empty(0, dtype=torch.long)).reshape(shape[:-1])


SAMPLE_CHUNK_ELEMENTS = 1 << 17
"""Values per chunk of :func:`sample_tokens` (1 MiB of float64)."""


def numerics_problems(cfg: Any) -> list[str]:
    """Checks of the shared sampling fields ``temperature``, ``top_p``, ``top_p_convention``.

    Every sampler config carries these three fields flat (YAML: ``top_p: 0.9`` directly under the
    sampler's parameters), plus ``profile: bool`` for network-only timing.
    """
    out = []
    if not cfg.temperature > 0:
        out.append(f"'temperature' is {cfg.temperature}; it must be > 0.")
    if not 0 < cfg.top_p <= 1:
        out.append(f"'top_p' is {cfg.top_p}; it must lie in (0, 1] (1 disables nucleus).")
    if cfg.top_p_convention not in ("hf", "strict"):
        out.append(f"'top_p_convention' is {cfg.top_p_convention!r}; allowed: 'hf', 'strict'.")
    return out
