"""Skinny-row linears: y = x·Wᵀ + b on a few rows, by whatever reads W fastest here.

A cached call feeds 1-4 tokens, so each linear is a matrix-vector product whose time is the time
to stream W. How fast BLAS streams W then depends on the product it is handed and on how W lies
in memory, and no choice wins everywhere (2-core AMD EPYC dev box with another job running, fp32,
1 thread, GB/s of W read, DiT-small's weights;
``rows`` = W (out, in) row-major as ``nn.Linear`` holds it, ``cols`` = the same values stored
column-major, i.e. a (in, out) row-major buffer seen transposed):

=============  ==========================  ==========================================
shape          1 row                        2 rows
=============  ==========================  ==========================================
768 → 3072     rows 12, cols 20             rows ``F.linear`` 5.6, rows skinny 19, cols 8.6
3072 → 768     rows 18.5, cols 13.6         rows 10.5 (either product), cols ≤ 6.3
768 → 50258    rows 11, cols 23             rows skinny 7.8, cols 9.0
=============  ==========================  ==========================================

(*skinny* = the product computed as (W·xᵀ)ᵀ, ``torch.addmm(b, W, xᵀ)``; the weight-bandwidth floor,
one ``amax`` over W, ran at 21-35 GB/s.) So both are measured per device, dtype, thread count and
shape, on the network's own weights of that shape (all of them in turn, so a probe streams from
the level of the memory hierarchy a call does), interleaved, best of :data:`PROBE_ROUNDS`:

* **Layout** (:func:`choose_layout`, at :meth:`DiT.freeze_conditioning`): the layout whose best
  product is fastest at the row count the family's cached calls feed (AR 1; Eso-LM (B) 2 rows
  through the blocks and 1 through the head; BD3-LM L′; MDLM none: kept ``rows``). ``cols`` must
  win by :data:`MARGIN`; ``train()`` puts every weight back to ``rows``.
* **Product** (:func:`measure_rule`, per layout): the skinny product for 1 row iff it won there,
  and for 2 … ``upto`` rows, where ``upto`` + 1 is the first row count (upwards from 2) at which
  it lost; ``F.linear`` otherwise and always above :data:`MAX_ROWS` rows.

Decisions are kept in :data:`LAYOUTS` and :data:`RULES` for the process. ``DLMBENCH_SKINNY=
auto|always|never`` (read once) or :func:`forced` (tests) override the product (``never``: also
no relayout). Every variant computes each output as one dot product of a row of W with a row of
x; BLAS may sum the terms in another order (an ulp or so), and the cached-versus-uncached oracle
tests run with each product and each layout forced.

Shapes: x (…, in), W (out, in), b (out,), y (…, out); n = rows of x = x.numel() / in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlmcore.errors import UserError

ENV = "DLMBENCH_SKINNY"
MODES = ("auto", "always", "never")
LAYOUT_NAMES = ("rows", "cols")
MAX_ROWS = 8
"""Row counts above this always use ``F.linear`` (enough rows to be a real GEMM)."""
MARGIN = 0.05
"""A challenger (skinny product, ``cols`` layout) must be this much faster (fraction) to win."""
PROBE_ROUNDS = 5
"""Timed passes per variant and row count (after one warm-up pass); the minimum is kept."""

ShapeKey = tuple[str, torch.dtype, int, int, int, bool]
"""(device, dtype, threads, in, out, has bias)."""
RuleKey = tuple[str, torch.dtype, int, int, int, bool, str]
"""A :data:`ShapeKey` and the layout."""


class SkinnyModeError(UserError):
    """``DLMBENCH_SKINNY``, :func:`forced` or :func:`set_layout` got an unknown value."""


@dataclass(frozen=True)
class SkinnyRule:
    """The measured product decision for one shape and layout on one device.

    Attributes:
        one_row: the skinny product for n = 1.
        upto: the skinny product for 2 ≤ n ≤ ``upto`` (``upto`` < 2: never for n ≥ 2).
        timings: (n, F.linear seconds, skinny seconds) of each probed row count, per pass over
            the probed weights.
    """

    one_row: bool
    upto: int
    timings: tuple[tuple[int, float, float], ...] = ()

    def uses_skinny(self, n: int) -> bool:
        """Whether n rows take the skinny product."""
        return self.one_row if n == 1 else 2 <= n <= self.upto


@dataclass(frozen=True)
class LayoutChoice:
    """The measured layout for one shape at one design row count.

    Attributes:
        layout: ``rows`` or ``cols``.
        rows: the design row count it was measured at.
        seconds: best seconds per pass over the probed weights, per layout, at ``rows``.
    """

    layout: str
    rows: int
    seconds: tuple[tuple[str, float], ...] = ()


RULES: dict[RuleKey, SkinnyRule] = {}
"""Every product rule measured in this process (cleared by :func:`reset`)."""
LAYOUTS: dict[tuple[ShapeKey, int], LayoutChoice] = {}
"""Every layout chosen in this process, by shape and design row count."""

_mode: str | None = None  # the effective mode once read; forced() overrides it
_generation = 0  # bumped by invalidate(): a module's cached rule older than this is looked up again


def check_mode(value: str, source: str, allowed: tuple[str, ...] = MODES) -> str:
    """``value`` if allowed, else a one-line :class:`SkinnyModeError`."""
    if value not in allowed:
        raise SkinnyModeError(
            f"{source} is {value!r}; allowed: {', '.join(allowed)}. Unset it (or use 'auto') to "
            "let dlmbench measure which product is faster."
        )
    return value


def current_mode() -> str:
    """The mode in force: :func:`forced`'s, else ``$DLMBENCH_SKINNY`` (read once), else auto."""
    global _mode
    if _mode is None:
        _mode = check_mode(os.environ.get(ENV, "auto") or "auto", f"${ENV}")
    return _mode


@contextmanager
def forced(mode: str) -> Iterator[None]:
    """Force the product, ``always`` / ``never`` (or ``auto``), inside the block."""
    global _mode
    check_mode(mode, "skinny.forced(mode)")
    before = _mode
    _mode = mode
    try:
        yield
    finally:
        _mode = before


def reset() -> None:
    """Forget every measured decision and re-read ``$DLMBENCH_SKINNY`` at the next use."""
    global _mode
    RULES.clear()
    LAYOUTS.clear()
    _mode = None
    invalidate()


# ---------------------------------------------------------------------------------------------
# The products and the layouts
# ---------------------------------------------------------------------------------------------


def plain(x: Tensor, module: nn.Linear) -> Tensor:
    """``F.linear`` (x·Wᵀ + b): (…, in) → (…, out)."""
    return F.linear(x, module.weight, module.bias)


def skinny_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """(W·xᵀ + b)ᵀ: (…, in) → (…, out), contiguous."""
    x2 = x.reshape(-1, weight.shape[1])
    if bias is None:
        y = torch.mm(weight, x2.t())
    else:
        y = torch.addmm(bias.unsqueeze(1), weight, x2.t())
    return y.t().contiguous().view(*x.shape[:-1], weight.shape[0])  # no copy for 1 row


def layout_of(weight: Tensor) -> str:
    """``cols`` when W (out, in) is stored column-major (a transposed (in, out) buffer)."""
    out, k = weight.shape
    return "cols" if out > 1 and k > 1 and weight.stride() == (1, out) else "rows"


def as_layout(weight: Tensor, layout: str) -> Tensor:
    """The values of ``weight`` (out, in) stored in ``layout`` (a copy unless already so)."""
    if layout_of(weight) == layout:
        return weight
    with torch.no_grad(), torch.inference_mode(False):
        if layout == "cols":
            return weight.detach().t().contiguous().t()
        return weight.detach().contiguous()


def set_layout(modules: Iterable[nn.Module], layout: str) -> None:
    """Store every ``nn.Linear`` weight of ``modules`` in ``layout`` (same values, same object)."""
    check_mode(layout, "skinny.set_layout(layout)", LAYOUT_NAMES)
    for m in modules:
        if isinstance(m, nn.Linear) and layout_of(m.weight) != layout:
            m.weight.data = as_layout(m.weight, layout)
            invalidate()


def linear(x: Tensor, module: nn.Linear) -> Tensor:
    """``module(x)`` by the product the rule picks for this many rows: (…, in) → (…, out).

    A missing rule is measured on ``module.skinny_peers`` (set by :func:`group_linears`; the
    module alone otherwise); :meth:`DiT.freeze_conditioning` measures them all beforehand.
    """
    w, b = module.weight, module.bias
    n = x.numel() // w.shape[1]
    if n > MAX_ROWS or n == 0:
        return F.linear(x, w, b)
    mode = _mode or current_mode()
    if mode == "never":
        return F.linear(x, w, b)
    if mode == "auto":
        threads = torch.get_num_threads()
        cached = module.__dict__.get("_skinny_rule")  # (generation, threads, rule)
        if cached is None or cached[0] != _generation or cached[1] != threads:
            rule = RULES.get(rule_key(w, b)) or prepare([module])[0]
            cached = module.__dict__["_skinny_rule"] = (_generation, threads, rule)
        if not cached[2].uses_skinny(n):
            return F.linear(x, w, b)
    return skinny_product(x, w, b)


def invalidate() -> None:
    """Make every module look its rule up again (weights moved, relaid out or replaced)."""
    global _generation
    _generation += 1


def shape_key(weight: Tensor, bias: Tensor | None) -> ShapeKey:
    """(device, dtype, threads, in, out, has bias) of a linear here and now."""
    threads = torch.get_num_threads()
    return (str(weight.device), weight.dtype, threads, weight.shape[1], weight.shape[0],
            bias is not None)  # fmt: skip


def rule_key(weight: Tensor, bias: Tensor | None) -> RuleKey:
    """:func:`shape_key` and the weight's layout."""
    return (*shape_key(weight, bias), layout_of(weight))


def group_linears(modules: Iterable[nn.Module]) -> None:
    """Give every ``nn.Linear`` of ``modules`` the tuple of those of its shape (``skinny_peers``).

    A decision is then measured by streaming all the peers' weights, as a network call does.
    """
    groups: dict[tuple[int, int, bool], list[nn.Linear]] = {}
    for m in modules:
        if isinstance(m, nn.Linear):
            groups.setdefault((m.in_features, m.out_features, m.bias is not None), []).append(m)
    for members in groups.values():
        peers = tuple(members)
        for m in members:
            m.__dict__["skinny_peers"] = peers  # a plain attribute: not a submodule


def _peer_groups(modules: Iterable[nn.Module]) -> list[tuple[nn.Linear, ...]]:
    seen: dict[int, tuple[nn.Linear, ...]] = {}
    for m in modules:
        if isinstance(m, nn.Linear):
            peers = getattr(m, "skinny_peers", None) or (m,)
            seen.setdefault(id(peers[0]), peers)
    return list(seen.values())


def prepare(modules: Iterable[nn.Module], design_rows: int | None = None) -> list[SkinnyRule]:
    """Choose the layout (at ``design_rows``) and measure the rule of every linear's group.

    Each is measured once per process and key. ``design_rows`` None, or above
    :data:`MAX_ROWS`: the layout is left as it is. Returns the rules, one per group.
    """
    rules = []
    for peers in _peer_groups(modules):
        if design_rows is not None and 1 <= design_rows <= MAX_ROWS:
            set_layout(peers, choose_layout(peers, design_rows).layout)
        key = rule_key(peers[0].weight, peers[0].bias)
        if key not in RULES:
            RULES[key] = measure_rule(peers)
        rules.append(RULES[key])
    return rules


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

Weights = Sequence[tuple[Tensor, Tensor | None]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pass_seconds(
    fn: Callable[[Tensor, Tensor, Tensor | None], Tensor], x: Tensor, weights: Weights
) -> float:
    """Seconds of one pass of ``fn`` over every (W, b)."""
    dev = x.device
    _sync(dev)
    t0 = time.perf_counter()
    for w, b in weights:
        fn(x, w, b)
    _sync(dev)
    return time.perf_counter() - t0


Variant = tuple[Callable[[Tensor, Tensor, Tensor | None], Tensor], Weights]
"""A product and the weights it streams."""


def probe(variants: Sequence[Variant], n: int) -> list[float]:
    """Best seconds per pass of each variant on n rows: :data:`PROBE_ROUNDS` interleaved rounds.

    Every round runs each variant once, in forward then reverse order, so that a burst of
    contention falls on all of them; the first round only warms up.
    """
    w0 = variants[0][1][0][0]
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, w0.shape[1], generator=g).to(device=w0.device, dtype=w0.dtype)
    best = [float("inf")] * len(variants)
    order = list(range(len(variants)))
    with torch.no_grad():
        for i in range(PROBE_ROUNDS + 1):
            for j in order if i % 2 else order[::-1]:
                t = _pass_seconds(variants[j][0], x, variants[j][1])
                if i:
                    best[j] = min(best[j], t)
    return best


def probe_rows(weights: Weights, n: int) -> tuple[float, float]:
    """(F.linear s, skinny s) per pass over ``weights`` on n rows."""
    t_lin, t_sk = probe([(F.linear, weights), (skinny_product, weights)], n)
    return t_lin, t_sk


def _weights(modules: Sequence[nn.Linear], layout: str | None = None) -> Weights:
    out = []
    for m in modules:
        w = m.weight.detach() if layout is None else as_layout(m.weight.detach(), layout)
        out.append((w, None if m.bias is None else m.bias.detach()))
    return out


def measure_rule(modules: Sequence[nn.Linear]) -> SkinnyRule:
    """Time both products on ``modules``' weights for 1, 2, 3, … rows; see the module docstring."""
    weights = _weights(modules)
    timings = []

    def wins(n: int) -> bool:
        t_lin, t_sk = probe_rows(weights, n)
        timings.append((n, t_lin, t_sk))
        return t_sk < (1.0 - MARGIN) * t_lin

    one_row = wins(1)
    upto = 1
    while upto < MAX_ROWS and wins(upto + 1):
        upto += 1
    return SkinnyRule(one_row=one_row, upto=upto, timings=tuple(timings))


def choose_layout(modules: Sequence[nn.Linear], rows: int) -> LayoutChoice:
    """The layout whose faster product streams ``modules``' weights fastest at ``rows`` rows."""
    key = (shape_key(modules[0].weight, modules[0].bias), rows)
    if key not in LAYOUTS:
        by_layout = [_weights(modules, layout) for layout in LAYOUT_NAMES]
        variants = [(fn, w) for w in by_layout for fn in (F.linear, skinny_product)]
        t = probe(variants, rows)
        seconds = {"rows": min(t[0], t[1]), "cols": min(t[2], t[3])}
        cols = seconds["cols"] < (1.0 - MARGIN) * seconds["rows"]
        LAYOUTS[key] = LayoutChoice("cols" if cols else "rows", rows, tuple(seconds.items()))
    return LAYOUTS[key]
