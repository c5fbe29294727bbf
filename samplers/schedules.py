"""Unmasking schedules (how many tokens a step unmasks) and unmasking policies (which ones).

Two small registries, each entry one method wide (house-style §1):

* ``SCHEDULES``: the α_t maths. ``alpha(t)`` for t ∈ [0, 1] (non-increasing, α(0) ≈ 1,
  α(1) ≈ 0) and ``counts(n_tokens, num_steps, generator, alpha0)``: tokens unmasked at each of
  the T grid steps t_i = 1 − i/T → s_i = t_i − 1/T. Used by MDLM, BD3-LM (within a block) and
  Eso-LM's diffusion phase.
* ``POLICIES``: which masked positions a step commits, given how many. Policies that read the
  model's confidence choose model-dependent positions; *adaptive* ones (``threshold``) also
  commit a model-dependent number, so their NFE depends on the model.

| schedule    | α_t                 | counts                                                  |
|-------------|---------------------|---------------------------------------------------------|
| ``loglinear`` | 1 − (1 − 10⁻³)·t  | binomial walk (random; the papers' schedule)            |
| ``cosine``  | cos(π·t/2)          | binomial walk (random)                                  |
| ``linear``  | 1 − t               | deterministic: rounded expected cumulative counts       |
| ``even``    | 1 − t               | deterministic: ⌈n/T⌉ for the first n mod T steps, then ⌊n/T⌋ |

| policy          | commits                                                   | adaptive |
|-----------------|-----------------------------------------------------------|----------|
| ``random``      | k uniformly random masked positions (ancestral samplers)  | no       |
| ``left_to_right`` | the k leftmost masked positions                         | no       |
| ``confidence``  | the k most confident (LLaDA low-confidence remasking)     | no       |
| ``margin``      | the k largest top-1 − top-2 probability margins (Dream ``topk_margin``) | no |
| ``entropy``     | the k lowest-entropy positions (Dream ``entropy``)        | no       |
| ``threshold``   | every position with confidence > τ, at least max(k, 1) (Fast-dLLM) | yes |

A policy ranks positions by keys: the proposed token's probability (the *confidence*) unless it
defines ``score(log_p, proposal)``; :func:`policy_keys` computes the keys a sampler passes to
``select``. ``margin`` and ``entropy`` define ``score``; all keys come from the same float64
distribution the proposals are drawn from (after SUBS, temperature and top-p).

Entries are classes whose constructors take keyword parameters with defaults
(``POLICIES.get("threshold")(threshold=0.9)``); :func:`build` and :func:`build_problems`
construct and validate them from config values. Adding a schedule takes ~20 lines: define
``alpha`` (and ``counts`` if the binomial walk is not what you want), decorate with
``@SCHEDULES.register("name")``. Third-party packages register through the entry-point groups
``dlmbench.schedules`` and ``dlmbench.policies`` (see :func:`load_entry_points`).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import math
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from dlmcore.registry import Registry, RegistryError
from samplers.lazytorch import lazy_torch

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_torch(globals())

EPS = 1e-3
"""Schedule epsilon of the reference code: α_t = 1 − (1 − ε)·t."""


@runtime_checkable
class Schedule(Protocol):
    """How many tokens each step unmasks.

    A schedule may set the class attribute ``deterministic = True`` when ``counts`` ignores the
    generator; samplers then take the analytic NFE from the counts instead of from α.
    """

    name: ClassVar[str]

    def alpha(self, t: Tensor) -> Tensor:
        """α_t, the probability that a token is still clean at time t (float64 tensor)."""
        ...

    def counts(
        self, n_tokens: int, num_steps: int, generator: torch.Generator, alpha0: float = 1.0
    ) -> list[int]:
        """Tokens unmasked at each of the ``num_steps`` grid steps (zeros allowed).

        With ``alpha0 = 1`` the counts sum to ``n_tokens``; with ``alpha0 < 1`` about
        (1 − α0)·n_tokens remain for a sequential phase (Eso-LM).
        """
        ...


@runtime_checkable
class UnmaskPolicy(Protocol):
    """Which masked positions a step commits.

    ``adaptive`` is true when the number committed may exceed ``k`` (model-dependent NFE; profile
    timing is then invalid). A non-adaptive policy commits exactly min(k, masks left) per row; an
    adaptive one at least that many, so a sampler whose counts sum to L always finishes.
    """

    name: ClassVar[str]
    adaptive: ClassVar[bool]
    #: Whether ``select`` reads ``confidence``. A policy that does not (random, left-to-right)
    #: lets samplers choose positions first and draw tokens only where they commit.
    uses_confidence: ClassVar[bool]

    def select(
        self, confidence: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Choose positions to commit.

        A policy may also define ``score(log_p, proposal) -> (b, n)`` float64 keys (larger =
        commit first); samplers then pass those keys as ``confidence`` (:func:`policy_keys`).

        Args:
            confidence: (b, n) float64 probability of each position's proposed token, or the
                policy's own ``score``; ``None`` for a policy whose ``uses_confidence`` is false.
            masked: (b, n) bool, positions still masked.
            k: (b,) int64 tokens to commit per row (adaptive policies treat it as a floor).
            generator: random source on the same device.

        Returns:
            (b, n) bool, a subset of ``masked``.
        """
        ...


SCHEDULES: Registry[type] = Registry("schedule")
POLICIES: Registry[type] = Registry("unmasking policy")


# --------------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------------


def step_probabilities(schedule: Schedule, num_steps: int, alpha0: float = 1.0) -> Tensor:
    """Law of the step at which a token, masked at t = 1, is unmasked by the binomial walk.

    Step i moves t_i = 1 − i/T to s_i = t_i − 1/T; a token still masked at t_i unmasks with
    probability p_i = (α_s − α_t)/(1 − α_t) (clipped to [0, 1]), α = α0·schedule.alpha. So
    P(step i) = p_i·Π_{j<i}(1 − p_j), and the last entry is P(never) = Π_j (1 − p_j), about
    1 − α0 (the Eso-LM sequential phase).

    Returns:
        (T + 1,) float64 on the CPU, summing to 1.
    """
    grid = torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps  # t: 1 … 1/T
    a_t = alpha0 * schedule.alpha(grid).to(torch.float64)
    a_s = alpha0 * schedule.alpha(grid - 1.0 / num_steps).to(torch.float64)
    denom = 1.0 - a_t
    p = torch.where(denom > 0, (a_s - a_t) / denom.clamp_min(1e-300), torch.zeros_like(a_t))
    p = p.clamp(0.0, 1.0)
    survive = torch.cumprod(1.0 - p, dim=0)  # P(still masked after step i)
    before = torch.cat([torch.ones(1, dtype=torch.float64), survive[:-1]])
    return torch.cat([before * p, survive[-1:]])


def binomial_counts(
    schedule: Schedule,
    n_tokens: int,
    num_steps: int,
    generator: torch.Generator,
    alpha0: float = 1.0,
) -> list[int]:
    """The paper's binomial walk ("modified first-hitting", algorithms.md §3.4).

    Walk t = 1, 1 − 1/T, …, 1/T with s = t − 1/T; with R masks remaining the walk draws
    n ~ Binomial(R, (α_s − α_t)/(1 − α_t)), α = α0·schedule.alpha. Drawn here in one shot with
    the same law: each of the ``n_tokens`` tokens picks its step independently from
    :func:`step_probabilities` (a multinomial over T steps plus "never"), O(n + T) instead of T
    sequential draws. Runs on ``generator``'s device.

    Returns:
        A list of ``num_steps`` counts (zeros kept: the sampler drops them).
    """
    if n_tokens <= 0:
        return [0] * num_steps
    probs = step_probabilities(schedule, num_steps, alpha0).to(generator.device)
    steps = torch.multinomial(probs, n_tokens, replacement=True, generator=generator)
    return torch.bincount(steps, minlength=num_steps + 1)[:num_steps].tolist()


def rounded_counts(
    schedule: Schedule, n_tokens: int, num_steps: int, alpha0: float = 1.0
) -> list[int]:
    """Deterministic counts that follow α: round the expected cumulative count at each s_i.

    C(s) = round(n·(α0·α(s) − α0·α(1))/(1 − α0·α(1))) tokens are clean at time s (none at t = 1);
    step i unmasks C(s_i) − C(t_i). With α0 = 1 the counts sum to n exactly.
    """
    grid = torch.arange(num_steps, -1, -1, dtype=torch.float64) / num_steps  # 1, …, 1/T, 0
    a = alpha0 * schedule.alpha(grid).to(torch.float64)
    frac = ((a - a[0]) / (1.0 - a[0])).clamp(0.0, 1.0) if float(a[0]) < 1 else torch.zeros_like(a)
    # Halves round up; the 1e-9 absorbs float error in α (e.g. 3·(1 − 5/6) = 0.4999…).
    cum = torch.floor(n_tokens * frac + 0.5 + 1e-9).long().clamp(0, n_tokens)
    cum = torch.cummax(cum, dim=0).values  # rounding never makes a count negative
    return (cum[1:] - cum[:-1]).tolist()


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


@SCHEDULES.register("loglinear")
class LogLinear:
    """The papers' schedule: α_t = 1 − (1 − ε)·t (linear α, log-linear total noise σ(t))."""

    name = "loglinear"
    deterministic = False

    def alpha(self, t: Tensor) -> Tensor:
        """α_t = 1 − (1 − 10⁻³)·t."""
        return 1.0 - (1.0 - EPS) * torch.as_tensor(t, dtype=torch.float64)

    def counts(
        self, n_tokens: int, num_steps: int, generator: torch.Generator, alpha0: float = 1.0
    ) -> list[int]:
        """Binomial walk; with α0 = 1 the last step takes every remaining token."""
        return binomial_counts(self, n_tokens, num_steps, generator, alpha0)

    def counts_rows(
        self, n_tokens: int, num_steps: int, rows: int, generator: torch.Generator
    ) -> Tensor:
        """``rows`` independent walks at once (optional fast path, see binomial_counts_rows)."""
        return binomial_counts_rows(self, n_tokens, num_steps, rows, generator)


@SCHEDULES.register("cosine")
class Cosine:
    """α_t = cos(π·t/2): few tokens early (t near 1), many late. α(0) = 1, α(1) = 6·10⁻¹⁷."""

    name = "cosine"
    deterministic = False

    def alpha(self, t: Tensor) -> Tensor:
        """α_t = cos(π·t/2)."""
        return torch.cos(0.5 * math.pi * torch.as_tensor(t, dtype=torch.float64))

    def counts(
        self, n_tokens: int, num_steps: int, generator: torch.Generator, alpha0: float = 1.0
    ) -> list[int]:
        """Binomial walk on the cosine α."""
        return binomial_counts(self, n_tokens, num_steps, generator, alpha0)


@SCHEDULES.register("linear")
class Linear:
    """α_t = 1 − t with deterministic counts: the linear α's expected counts, rounded.

    Unlike ``loglinear`` (random binomial counts), every sequence gets the same counts:
    cumulative round(n·α0·(i+1)/T) after step i, so NFE = number of non-zero counts = min(n, T).
    """

    name = "linear"
    deterministic = True

    def alpha(self, t: Tensor) -> Tensor:
        """α_t = 1 − t."""
        return 1.0 - torch.as_tensor(t, dtype=torch.float64)

    def counts(
        self, n_tokens: int, num_steps: int, generator: torch.Generator, alpha0: float = 1.0
    ) -> list[int]:
        """Rounded expected counts (the generator is not used)."""
        return rounded_counts(self, n_tokens, num_steps, alpha0)


@SCHEDULES.register("even")
class Even:
    """Equal split of round(α0·n) tokens over T steps, remainders first (LLaDA's fixed k).

    Steps 0 … (n mod T) − 1 take ⌈n/T⌉ tokens, the rest ⌊n/T⌋; with n < T the first n steps take
    one token each and the later ones none. α_t = 1 − t is the curve this split follows.
    """

    name = "even"
    deterministic = True

    def alpha(self, t: Tensor) -> Tensor:
        """α_t = 1 − t."""
        return 1.0 - torch.as_tensor(t, dtype=torch.float64)

    def counts(
        self, n_tokens: int, num_steps: int, generator: torch.Generator, alpha0: float = 1.0
    ) -> list[int]:
        """⌈n/T⌉ × (n mod T), then ⌊n/T⌋ (the generator is not used)."""
        total = min(n_tokens, int(math.floor(alpha0 * n_tokens + 0.5)))
        q, r = divmod(total, num_steps)
        return [q + 1] * r + [q] * (num_steps - r)


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------


@POLICIES.register("random")
class RandomPolicy:
    """Commit k masked positions chosen uniformly at random (the ancestral samplers' rule)."""

    name = "random"
    adaptive = False
    uses_confidence = False

    def select(
        self, confidence: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Top-k of uniform random keys over the masked positions."""
        keys = torch.rand(masked.shape, generator=generator, device=masked.device)
        return _top_k_mask(keys, masked, k)


@POLICIES.register("left_to_right")
class LeftToRight:
    """Commit the k leftmost masked positions (semi-autoregressive order; no random draws)."""

    name = "left_to_right"
    adaptive = False
    uses_confidence = False

    def select(
        self, confidence: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Top-k of the keys −position."""
        n = masked.shape[-1]
        keys = -torch.arange(n, device=masked.device, dtype=torch.float64).expand(masked.shape)
        return _top_k_mask(keys, masked, k)


@POLICIES.register("confidence")
class Confidence:
    """LLaDA low-confidence remasking: commit the k most confident masked positions.

    Confidence is the probability of each position's proposed token; the rest stay masked
    (Nie et al. 2025, arXiv 2502.09992, Alg. 5).
    """

    name = "confidence"
    adaptive = False
    uses_confidence = True

    def select(
        self, confidence: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Top-k of the confidence over the masked positions."""
        return _top_k_mask(confidence, masked, k)


@POLICIES.register("margin")
class Margin:
    """Commit the k masked positions with the largest top-1 − top-2 probability margin.

    A position whose two best tokens are close is left for later even when its top token is
    likely (Kim et al. 2025, arXiv 2502.06768; Dream's ``topk_margin``). The margin does not
    depend on the token drawn.
    """

    name = "margin"
    adaptive = False
    uses_confidence = True

    def score(self, log_p: Tensor, proposal: Tensor) -> Tensor:
        """p(top-1) − p(top-2): (b, n, V) float64 log-probabilities → (b, n) float64."""
        top2 = log_p.topk(2, dim=-1).values.exp()  # (b, n, 2)
        return top2[..., 0] - top2[..., 1]

    def select(
        self, confidence: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Top-k of the margin (passed as ``confidence``) over the masked positions."""
        return _top_k_mask(confidence, masked, k)


@POLICIES.register("entropy")
class Entropy:
    """Commit the k masked positions whose predictive distribution has the lowest entropy.

    Keys are −H(p) = Σ_v p_v log p_v, so the sharpest distributions go first (Dream's
    ``entropy`` algorithm, Ye et al. 2025, arXiv 2508.15487). Tokens outside the support
    (mask, top-p) contribute 0.
    """

    name = "entropy"
    adaptive = False
    uses_confidence = True

    def score(self, log_p: Tensor, proposal: Tensor) -> Tensor:
        """−H: (b, n, V) float64 log-probabilities → (b, n) float64 (≤ 0)."""
        p = log_p.exp()
        return torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=-1)

    def select(
        self, confidence: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Top-k of −H (passed as ``confidence``) over the masked positions."""
        return _top_k_mask(confidence, masked, k)


@POLICIES.register("threshold")
class Threshold:
    """Fast-dLLM parallel decoding: commit every masked position with confidence > τ.

    At least the max(k, 1) most confident ones are committed (Wu et al. 2025, arXiv 2505.22618,
    §3.3).

    With the ``even`` schedule and T = L (k = 1) this is Fast-dLLM's rule exactly; a larger k is
    a floor that keeps the run within T steps.

    Args:
        threshold: τ in (0, 1].
    """

    name = "threshold"
    adaptive = True
    uses_confidence = True

    def __init__(self, threshold: float = 0.9) -> None:
        if isinstance(threshold, bool) or not 0.0 < float(threshold) <= 1.0:
            raise ValueError(
                f"threshold τ is {threshold!r}; it must lie in (0, 1] (Fast-dLLM uses 0.9)."
            )
        self.threshold = float(threshold)

    def select(
        self, confidence: Tensor, masked: Tensor, k: Tensor, generator: torch.Generator
    ) -> Tensor:
        """(confidence > τ) ∪ top-max(k, 1) confidence, over the masked positions."""
        over = masked & (confidence > self.threshold)
        return over | _top_k_mask(confidence, masked, k.clamp_min(1))


def policy_keys(policy: Any, log_p: Tensor, proposal: Tensor) -> Tensor:
    """The keys ``policy.select`` ranks by: ``policy.score`` if defined, else p(proposal).

    Args:
        policy: an unmasking policy; ``score(log_p, proposal)`` is optional.
        log_p: (b, n, V) float64 log-probabilities the proposals were drawn from.
        proposal: (b, n) int64 proposed tokens.

    Returns:
        (b, n) float64.
    """
    score = getattr(policy, "score", None)
    if score is not None:
        return score(log_p, proposal)
    return log_p.gather(-1, proposal[..., None]).squeeze(-1).exp()


def _top_k_mask(keys: Tensor, masked: Tensor, k: Tensor) -> Tensor:
    """(b, n) bool selecting, per row, the k masked positions with the largest keys."""
    keys = keys.to(torch.float64).masked_fill(~masked, float("-inf"))
    order = torch.argsort(keys, dim=-1, descending=True)
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(keys.shape[-1], device=keys.device).expand_as(order)
    )
    return (rank < k[:, None]) & masked


# --------------------------------------------------------------------------------------------
# Construction from config values
# --------------------------------------------------------------------------------------------


def build_problems(registry: Registry[type], field: str, name: str, **params: Any) -> list[str]:
    """Every reason ``build(registry, field, name, **params)`` would fail, as sentences.

    ``field`` is the YAML key holding ``name`` (``schedule``, ``policy``); a parameter ``p``
    comes from the YAML key ``<field>_<p>`` (``policy_threshold``). ``None`` parameters are unset.
    """
    params = {k: v for k, v in params.items() if v is not None}
    if name not in registry:
        return [f"'{field}': {registry.unknown_message(name)}"]
    cls = registry.get(name)
    accepted = _keyword_params(cls)
    out = []
    for key, val in params.items():
        if accepted is not None and key not in accepted:
            takers = [n for n in registry.names() if _takes(registry.get(n), key)]
            out.append(
                f"'{field}_{key}' is {val!r}, but {registry.kind} '{name}' takes no '{key}'. "
                f"Remove '{field}_{key}', or pick one that takes it: {', '.join(takers) or 'none'}."
            )
    if out:
        return out
    try:
        cls(**params)
    except (TypeError, ValueError) as err:
        out.append(f"'{field}': {registry.kind} '{name}' rejects its parameters: {err}")
    return out


def build(registry: Registry[type], field: str, name: str, **params: Any) -> Any:
    """Construct entry ``name`` of ``registry`` with keyword ``params`` (``None`` = default).

    Raises:
        ValueError: unknown name (did-you-mean), a parameter the entry does not take, or a value
            its constructor rejects; every problem at once.
    """
    problems = build_problems(registry, field, name, **params)
    if problems:
        raise ValueError(" ".join(problems))
    return registry.get(name)(**{k: v for k, v in params.items() if v is not None})


def _takes(cls: type, key: str) -> bool:
    accepted = _keyword_params(cls)
    return accepted is None or key in accepted


def _keyword_params(cls: type) -> set[str] | None:
    """Keyword parameters of ``cls``'s constructor (``None`` if it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n, p in sig.parameters.items() if p.kind is not p.VAR_POSITIONAL}


# --------------------------------------------------------------------------------------------
# Plugins
# --------------------------------------------------------------------------------------------

ENTRY_POINT_GROUPS: dict[str, tuple[Registry[type], tuple[str, ...]]] = {
    "dlmbench.schedules": (SCHEDULES, ("alpha", "counts")),
    "dlmbench.policies": (POLICIES, ("select",)),
}
"""Entry-point group → (registry, methods an entry must have). The entry-point name is the
registry name; its value is the class, e.g. in a plugin's ``pyproject.toml``::

    [project.entry-points."dlmbench.schedules"]
    sqrt = "my_pkg.schedules:Sqrt"
"""


class PluginError(RuntimeError):
    """One or more installed dlmbench plugins could not be loaded (message names each)."""


def load_entry_points() -> list[str]:
    """Register every installed plugin of the groups in :data:`ENTRY_POINT_GROUPS`.

    Called once by ``samplers/__init__.py``.

    Returns:
        ``group:name`` of each plugin registered.

    Raises:
        PluginError: listing every plugin that failed to import, lacks a required method, or
            takes a name already registered, with the package to fix or uninstall.
    """
    problems, loaded = [], []
    for group, (registry, methods) in ENTRY_POINT_GROUPS.items():
        for ep in importlib.metadata.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            pkg = f"{dist.name} {dist.version}" if dist is not None else "an unknown package"
            where = f"plugin '{ep.name} = {ep.value}' (group {group}, from {pkg})"
            try:
                obj = ep.load()
            except Exception as err:  # noqa: BLE001  any import-time failure is reported
                problems.append(f"{where} failed to import: {type(err).__name__}: {err}")
                continue
            missing = [m for m in methods if not callable(getattr(obj, m, None))]
            if missing:
                problems.append(f"{where} has no method {', '.join(missing)}.")
                continue
            try:
                registry.add(ep.name, obj)
            except RegistryError as err:
                problems.append(f"{where}: {err}")
                continue
            loaded.append(f"{group}:{ep.name}")
    if problems:
        raise PluginError(
            f"{len(problems)} dlmbench plugin(s) could not be loaded:\n  - "
            + "\n  - ".join(problems)
            + "\nFix the package named, or uninstall it (pip uninstall <package>)."
        )
    return loaded


def binomial_counts_rows(
    schedule: Schedule,
    n_tokens: int,
    num_steps: int,
    rows: int,
    generator: torch.Generator,
    alpha0: float = 1.0,
) -> Tensor:
    """``rows`` independent binomial walks drawn together: (rows, T) int64 on the CPU.

    Same law as ``rows`` calls of :func:`binomial_counts` (each token picks its step from
    :func:`step_probabilities`), drawn in one multinomial call on ``generator``'s device. A
    schedule may expose it as the optional method ``counts_rows(n_tokens, num_steps, rows,
    generator)``; samplers that need many independent walks (BD3-LM: one per row and block) use
    it when present and call ``counts`` per row otherwise.
    """
    if n_tokens <= 0 or rows <= 0:
        return torch.zeros(max(rows, 0), num_steps, dtype=torch.long)
    probs = step_probabilities(schedule, num_steps, alpha0).to(generator.device)
    steps = torch.multinomial(
        probs.expand(rows, -1), n_tokens, replacement=True, generator=generator
    )  # (rows, n)
    counts = torch.zeros(rows, num_steps + 1, dtype=torch.long, device=steps.device)
    counts.scatter_add_(1, steps, torch.ones_like(steps))
    return counts[:, :num_steps].cpu()
