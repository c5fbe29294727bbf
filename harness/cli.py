"""The ``dlmbench`` command line (also ``python -m harness``).

Each command is contributed by an ``add_parser(subparsers)`` function listed in
:data:`SUBCOMMANDS`; the function registers its sub-parser and sets ``fn`` (called with the parsed
arguments, returning the exit code). Another module adds a command by appending its function.

Exit codes: 0 success; 1 a run finished with failed cells (status ``error``); 2 bad arguments or
an invalid config (reported before anything runs or is written).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EPILOG = """\
quick start (or: python -m harness ...):
  dlmbench ls samplers
  dlmbench run configs/smoke.yaml --dry-run
  dlmbench run configs/smoke.yaml && dlmbench show smoke
"""


# --------------------------------------------------------------------------------------------
# run / validate
# --------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> Any:
    """The (experiment, cells) of ``args.config`` + overrides, or an exit code 2 after a message."""
    from dlmcore.configio import ConfigError
    from harness.run.experiment import load_experiment

    _import_plugins()
    device_here = not (getattr(args, "dry_run", False) and getattr(args, "hardware", None))
    try:
        return load_experiment(args.config, args.overrides, device_here=device_here)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        print("Nothing was run or written. Fix the config (dlmbench ls samplers).", file=sys.stderr)
        return 2


def _import_plugins() -> None:
    """Fill the registries (samplers, schedules) through the packages' explicit imports."""
    import samplers  # noqa: F401


def cmd_run(args: argparse.Namespace) -> int:
    """Run (or resume) an experiment, or print its cost-model estimate with ``--dry-run``."""
    from dlmcore.errors import ConfigError
    from harness import results
    from harness.run import runner, sweep
    from harness.run.experiment import check_run_id

    if args.run_id is not None and (problems := check_run_id(args.run_id)):
        raise ConfigError(problems, "Invalid --run-id; nothing was run or written")
    if getattr(args, "executor", None):
        args.overrides = [*args.overrides, f"executor.kind={args.executor}"]
    peaks = _hardware_peaks(args)
    if isinstance(peaks, int):
        return peaks
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    exp, cells = loaded
    if args.dry_run:
        if peaks is not None:
            print(
                f"pricing on {peaks.device}: {peaks.flops_per_s / 1e12:.1f} TFLOP/s, "
                f"{peaks.bytes_per_s / 1e9:.0f} GB/s, {peaks.call_overhead_s * 1e3:.2f} ms per "
                f"call ({peaks.source}; roofline, max-combined)"
            )
        return print_estimate(runner.estimate(exp, cells, peaks))
    run_dir = sweep.run_experiment(
        exp, run_id=args.run_id, progress=not args.no_progress, retry_failed=args.retry_failed
    )
    if exp.executor.kind == "slurm" and exp.executor.cluster == "slurm" and not exp.executor.wait:
        print(f"{run_dir}: submitted; follow it with: dlmbench status {run_dir}")
        return 0
    df = results.load_results(run_dir)
    df = df[df["cell_id"].isin({c.cell_id for c in cells})]
    counts = df["status"].value_counts().to_dict()
    print(
        f"{run_dir}: {len(df)}/{len(cells)} cells, "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    cold = df[(df["status"] == "ok") & ~df["warmup_ok"].fillna(False).astype(bool)]
    if len(cold):
        print(
            f"warning: {len(cold)} cells' last warm-up is not within 5 % of their median "
            "(warmup_ok false); raise timing.warmup for steadier numbers."
        )
    print(f"see: dlmbench show {run_dir}")
    return 1 if counts.get("error") else 0


def _hardware_peaks(args: argparse.Namespace) -> Any:
    """``--hardware NAME`` (dry runs only) as spec-sheet :class:`Peaks`, or None, or exit 2."""
    name = getattr(args, "hardware", None)
    if not name:
        return None
    from harness.measure import costmodel
    from harness.report.claims import PAPER_CALL_OVERHEAD_S

    if not args.dry_run:
        print(
            f"error: --hardware {name} prices a dry run on other hardware; add --dry-run "
            "(a real run measures the device it runs on).",
            file=sys.stderr,
        )
        return 2
    overhead_ms = args.call_overhead_ms
    if overhead_ms is None:
        known = {k.lower(): v for k, v in PAPER_CALL_OVERHEAD_S.items()}
        overhead_ms = 1e3 * (known.get(name.lower()) or 0.0)
    try:
        return costmodel.Peaks.from_spec(name, call_overhead_s=overhead_ms / 1e3)
    except ValueError as e:
        print(f"error: --hardware: {e}", file=sys.stderr)
        return 2


def print_estimate(rows: list[dict[str, Any]]) -> int:
    """Print the dry-run table (parameters that vary only) and the total; return 0."""
    keys = sorted({k for r in rows for k in r["params"]})
    vary = [k for k in keys if len({repr(r["params"].get(k)) for r in rows}) > 1]
    for r in rows:
        params = " ".join(f"{k}={r['params'].get(k)}" for k in vary)
        mem = f"{_fmt(r.get('peak_mem_gb_est'))} GB" + (
            " (too big)" if r.get("fits") is False else ""
        )
        print(
            f"{r['label']:<18} L={r['seq_len']:<6} b={r['batch_size']:<5} seed={r['seed']:<3} "
            f"{_fmt(r['predicted_s']):>10} s/run {_fmt(r['total_s']):>10} s/cell "
            f"{mem:>16}  {params}"
        )
    total = sum(r["total_s"] for r in rows if not math.isnan(r["total_s"]))
    unknown = sum(math.isnan(r["total_s"]) for r in rows)
    note = f" ({unknown} cells without an estimate)" if unknown else ""
    print(
        f"{len(rows)} cells; predicted timed work about {_fmt(total)} s{note} "
        "(model loading excluded)."
    )
    too_big = sum(r.get("fits") is False for r in rows)
    if too_big:
        print(
            f"{too_big} cells' estimated peak memory exceeds what this machine has available; "
            "`run` records them as skipped (lower their batch sizes to measure them)."
        )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Load, type-check and build everything in a config without running or writing anything."""
    from harness.run.experiment import run_id_for

    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    exp, cells = loaded
    labels = list(dict.fromkeys(c.label for c in cells))
    print(f"OK: {len(cells)} cells over {len(labels)} sampler entries ({', '.join(labels)}).")
    print(f"Run folder: {Path(exp.output_dir) / run_id_for(exp, cells)}")
    return 0


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    """``run CONFIG [a.b=v ...]`` with ``--dry-run``, ``--run-id``, ``--retry-failed``."""
    p = sub.add_parser(
        "run",
        help="run (or resume) an experiment YAML",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("overrides", nargs="*", help="a.b=value overrides, e.g. timing.repeats=3")
    p.add_argument("--dry-run", action="store_true", help="print cells and predicted time only")
    p.add_argument(
        "--hardware",
        default=None,
        metavar="NAME",
        help="with --dry-run: price the cells on a named GPU's spec sheet (a6000, h200) instead "
        "of this machine; the config's device need not exist here",
    )
    p.add_argument(
        "--call-overhead-ms",
        type=float,
        default=None,
        help="with --hardware: per-call fixed overhead (default: the one inferred for the paper's "
        "A6000 runs, 6.5 ms; 0 for others)",
    )
    p.add_argument("--run-id", default=None, help="run folder name (default <name>-<hash>)")
    p.add_argument("--retry-failed", action="store_true", help="re-run error/oom/skipped cells")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--executor",
        default=None,
        metavar="KIND",
        help="local (default: here, in order), local-multi (one worker per device, a fresh "
        "process per cell) or slurm (submitit job arrays); same as executor.kind=KIND",
    )
    p.set_defaults(fn=cmd_run)


def add_validate_parser(sub: argparse._SubParsersAction) -> None:
    """``validate CONFIG [a.b=v ...]``."""
    p = sub.add_parser("validate", help="check a config and build every component; run nothing")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_validate)


# --------------------------------------------------------------------------------------------
# ls
# --------------------------------------------------------------------------------------------


def _fields(cls: type | None) -> list[str]:
    import dataclasses

    from dlmcore.configio import field_table

    if cls is None or not dataclasses.is_dataclass(cls):
        return ["    (no configurable fields)"]
    return [f"    {n:<20} {t:<28} default {d!r}" for n, t, d in field_table(cls)]


def _doc(obj: Any) -> str:
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""


def ls_samplers() -> list[str]:
    """Each registered sampler: families, summary, config fields with defaults."""
    from samplers.base import SAMPLERS

    out = []
    for name in SAMPLERS.names():
        cls = SAMPLERS.get(name)
        out.append(f"{name}  (families: {', '.join(cls.families)})  {_doc(cls)}")
        out += _fields(getattr(cls, "config_class", None))
    return out or ["(no samplers registered)"]


def ls_schedules() -> list[str]:
    """Schedules (how many tokens per step) and unmasking policies (which ones)."""
    from samplers.schedules import POLICIES, SCHEDULES

    out = []
    for title, reg in (("schedules", SCHEDULES), ("unmasking policies", POLICIES)):
        out.append(f"{title}:")
        for name in reg.names():
            entry = reg.get(name)
            out.append(f"  {name}  {_doc(entry)}")
            cfg = getattr(entry, "config_class", None)
            if cfg is not None:
                out += _fields(cfg)
    return out


def ls_sizes() -> list[str]:
    """Named model sizes with their dimensions and parameter counts (counted, not built)."""
    from harness.model.config import MODEL_SIZES, DiTConfig

    out = [f"{'size':<8} {'d':>5} {'N':>3} {'H':>3} {'c_dim':>5} {'params (V=50258)':>17}"]
    for name in MODEL_SIZES.names():
        dims = MODEL_SIZES.get(name)
        n = DiTConfig.from_size(name, vocab_size=50258).num_parameters()
        out.append(
            f"{name:<8} {dims['hidden_size']:>5} {dims['n_blocks']:>3} {dims['n_heads']:>3} "
            f"{dims['cond_dim']:>5} {n / 1e6:>16.1f}M"
        )
    return out


def ls_checkpoints() -> list[str]:
    """The checkpoint spec forms and fields, and dlmbench checkpoints found under checkpoints/."""
    from harness.model import modelspec
    from harness.model.config import MODEL_SIZES
    from harness.run.experiment import CheckpointSpec

    out = ["checkpoint entry (YAML: name: PATH, or name: {path: ..., vocab_size: ...}):"]
    out += _fields(CheckpointSpec)
    out.append("random-weight specs (family comes from the sampler; vocab_size required):")
    out += [f"    random:{s}" for s in MODEL_SIZES.names()]
    found = sorted(p.parent for p in Path("checkpoints").glob("**/config.json"))
    out.append(f"checkpoints found under ./checkpoints: {len(found)}")
    for d in found:
        try:
            cfg = modelspec.peek_config(str(d))
            out.append(
                f"    {d}  family {cfg.family}, size {modelspec.size_name(cfg)}, V={cfg.vocab_size}"
            )
        except (ValueError, OSError) as e:
            out.append(f"    {d}  unreadable: {e}")
    return out


def ls_tasks() -> list[str]:
    """Built-in tasks: levels, scoring normalisation, a sample prompt and answer per level."""
    from harness.tasks.suite import TASKS, generate

    out = ["built-in tasks (experiment `tasks: {names: [...], levels: [...], n: N}`; a JSONL "
           "file: `tasks: {file: path}`):"]  # fmt: skip
    for name in TASKS.names():
        spec = TASKS.get(name)
        scorer = (
            "valid answer, any of many" if spec.verify else f"normalisation: {spec.normalisation}"
        )
        note = "" if spec.default else "; name it, not in the default set"
        out.append(f"{name}  {spec.description}  ({scorer}{note})")
        for level in spec.levels:
            ex = generate(name, level, 1, 0)[0]
            out.append(f"    level {level}: {ex.prompt!r} -> {ex.answer!r}")
    return out


LS_TOPICS: dict[str, Callable[[], list[str]]] = {
    "samplers": ls_samplers,
    "schedules": ls_schedules,
    "checkpoints": ls_checkpoints,
    "sizes": ls_sizes,
    "tasks": ls_tasks,
}


def cmd_ls(args: argparse.Namespace) -> int:
    """Print one registry's entries."""
    _import_plugins()
    print("\n".join(LS_TOPICS[args.what]()))
    return 0


def add_ls_parser(sub: argparse._SubParsersAction) -> None:
    """``ls samplers|schedules|checkpoints|sizes``."""
    p = sub.add_parser("ls", help="list registry entries with their config fields and defaults")
    p.add_argument("what", choices=sorted(LS_TOPICS))
    p.set_defaults(fn=cmd_ls)


# --------------------------------------------------------------------------------------------
# show
# --------------------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.4g}"
    return "-" if x is None else str(x)


SHOW_PARAM_CHARS = 40
"""Widest parameter value ``show`` prints; longer ones end in an ellipsis."""


def _param_text(v: Any) -> str:
    """A parameter value for ``show``: mappings (stored as JSON) as ``k=v k=v``, then capped."""
    if isinstance(v, str) and v.startswith("{"):
        try:
            v = json.loads(v)
        except ValueError:
            pass
    if isinstance(v, dict):
        v = " ".join(f"{k}={x}" for k, x in v.items()) or "{}"
    text = _fmt(v) if not isinstance(v, str) else v
    return text if len(text) <= SHOW_PARAM_CHARS else text[: SHOW_PARAM_CHARS - 1] + "…"


def show_table(df: Any) -> str:
    """A compact text table of a run: one line per cell, varying parameters only."""
    import pandas as pd

    params = [c for c in df.columns if c.startswith("p_") and df[c].astype(str).nunique() > 1]
    t = df[["label", "seq_len", "batch_size", "seed", *params, "status"]].copy()
    for c in params:
        t[c] = t[c].map(_param_text)
    t.columns = ["label", "L", "b", "seed", *[c[2:] for c in params], "status"]

    def num(col: str) -> Any:
        return df[col].map(lambda v: _fmt(float(v)) if v is not None else "-")

    t["wall_s"] = num("wall_s")
    t["95% CI"] = [
        f"[{_fmt(a)}, {_fmt(b)}]" for a, b in zip(df["wall_s_ci_lo"], df["wall_s_ci_hi"])
    ]
    t["tok/s"] = num("tokens_per_s")
    t["nfe"] = num("nfe_total")
    t["ms/call"] = num("ms_per_call")
    mem = df["peak_alloc_gb"].where(df["peak_alloc_gb"].notna(), df["peak_rss_gb"])
    t["mem_gb"] = mem.map(lambda v: _fmt(float(v)))
    t["J"] = num("energy_j")
    t["trust"] = df["trust"].fillna("-") if "trust" in df.columns else "-"
    with pd.option_context("display.max_columns", None, "display.width", None):
        return t.to_string(index=False)


def cmd_show(args: argparse.Namespace) -> int:
    """Print a run's cells as a compact table, then its failures."""
    from harness.results import load_results, resolve_run

    try:
        run_dir = resolve_run(args.run, args.output_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    df = load_results(run_dir)
    counts = ", ".join(f"{k} {v}" for k, v in df["status"].value_counts().items())
    print(f"{run_dir}  ({len(df)} cells: {counts or 'none yet'})")
    if len(df):
        print(show_table(df))
    for _, r in df[df["status"] != "ok"].iterrows():
        print(f"  {r['cell_id']} {r['label']} L={r['seq_len']} b={r['batch_size']}: {r['error']}")
    if "trust" in df.columns:
        for _, r in df[df["trust"] == "noisy"].iterrows():
            where = f"{r['cell_id']} {r['label']} L={r['seq_len']} b={r['batch_size']}"
            print(f"  noisy {where}: {r['trust_reason']}")
    return 0


def add_show_parser(sub: argparse._SubParsersAction) -> None:
    """``show RUN`` (a run folder, run id, or experiment name)."""
    p = sub.add_parser("show", help="print a run's results as a compact table")
    p.add_argument("run", help="results/<run_id>, a run id, or an experiment name (newest)")
    p.add_argument("--output-dir", default="results", help="where run folders live")
    p.set_defaults(fn=cmd_show)


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Print a run's done / skipped / failed / running / pending counts and a per-cell list."""
    from harness.results import resolve_run
    from harness.run import cellrun, executors

    _import_plugins()
    try:
        run_dir = resolve_run(args.run, args.output_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cells, problems = executors.cells_of_run(run_dir)
    if not cells:
        print(
            f"error: cannot list the cells of '{run_dir}' from its config.yaml: "
            + "; ".join(problems or ["no cells"])
            + ". Are its samplers registered here (dlmbench ls samplers)?",
            file=sys.stderr,
        )
        return 2
    states = cellrun.cell_states(run_dir, cells)
    counts = executors.status_counts(states)
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"{run_dir}  ({len(states)} cells: {summary})")
    only = set(args.only.split(",")) if args.only else set(cellrun.STATES)
    for s in states:
        if s["state"] in only:
            note = s["where"] or s["error"] or ""
            print(
                f"  {s['state']:<8} {s['cell_id']} {s['label']:<16} L={s['seq_len']:<6} "
                f"b={s['batch_size']:<5} seed={s['seed']:<3} {note}"
            )
    return 0


def add_status_parser(sub: argparse._SubParsersAction) -> None:
    """``status RUN [--only STATES]``."""
    p = sub.add_parser(
        "status", help="done / running / failed / pending cells of a run (any executor)"
    )
    p.add_argument("run", help="results/<run_id>, a run id, or an experiment name (newest)")
    p.add_argument("--output-dir", default="results", help="where run folders live")
    p.add_argument(
        "--only", default=None, help="comma-separated states to list: " + ",".join(_STATES)
    )
    p.set_defaults(fn=cmd_status)


_STATES = ("done", "skipped", "failed", "running", "pending")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_run_parser,
    add_validate_parser,
    add_ls_parser,
    add_show_parser,
    add_status_parser,
]
"""``add_parser(subparsers)`` functions; append one to add a command."""


MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "harness.demo",
        "speed-quality frontier and accuracy under parallelism of the shipped checkpoints",
    ),
    "train": (
        "harness.train.loop",
        "train a small checkpoint (MDLM, BD3-LM, Eso-LM, AR) on the offline corpus",
    ),
    "convert-ckpt": (
        "harness.model.checkpoints",
        "convert a (trusted) Lightning .ckpt once to config.json + model.safetensors",
    ),
    "quality": (
        "harness.quality.stage",
        "score a run's saved samples (Gen PPL, entropy, MAUVE) with an evaluator",
    ),
    "plot": (
        "harness.report.plots",
        "draw the frontier, quality-vs-NFE, speed-up and memory figures of result folders",
    ),
    "check-machine": (
        "harness.measure.machine_check",
        "report what would make timings unreliable here (load, busy processes, frequency scaling, "
        "threads)",
    ),
    "report": (
        "harness.report.claims",
        "reports over a run: claims (published ratios), matched (speed-ups at matched "
        "quality) or leaderboard (samplers ranked by accuracy under parallelism)",
    ),
}
"""Commands that live beside the code they drive: name → (module with ``add_parser``, help).

The module is imported only when its command runs (or its own ``--help`` is asked for), so
``dlmbench --help`` stays cheap; the help line here must equal the module parser's (tested).
"""


def _chosen_command(argv: list[str]) -> str | None:
    """The first positional argument (the command), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser: every command of :data:`SUBCOMMANDS` and :data:`MODULE_COMMANDS`.

    Module commands other than the one chosen in ``argv`` get a stub parser (their help line
    only); ``argv=None`` builds every parser in full.
    """
    import importlib

    parser = argparse.ArgumentParser(
        prog="dlmbench",
        description="Benchmark diffusion-language-model samplers: speed, NFE, memory, energy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    chosen = None if argv is None else _chosen_command(argv)
    for name, (module, help_line) in MODULE_COMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dlmbench`` console script; returns the exit code.

    ``a.b=value`` overrides may also follow options (``run CONFIG --executor slurm a.b=1``).
    A user mistake (:class:`dlmcore.errors.UserError`, a file that cannot be read or written,
    a file that is not UTF-8) is one message on stderr and exit code 2, never a traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    code = run_command(args)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _closed_pipe()
    return code


def run_command(args: argparse.Namespace) -> int:
    """Call the chosen command; turn user mistakes into one message and exit code 2."""
    from dlmcore.errors import UserError

    try:
        return int(args.fn(args))
    except UserError as e:
        return _user_error(str(e))
    except UnicodeDecodeError as e:
        return _user_error(f"a file given to '{args.command}' is not UTF-8 text ({e.reason}).")
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        return _user_error(_os_message(e))
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print("interrupted; finished cells are kept, re-run to resume.", file=sys.stderr)
        return 130


def _os_message(e: OSError) -> str:
    """What went wrong with which path, and what to do."""
    what = {
        FileNotFoundError: "not found",
        PermissionError: "permission denied",
        IsADirectoryError: "is a folder, a file was expected",
        NotADirectoryError: "is not a folder (or a part of its path is a file)",
    }.get(type(e), e.strerror or "cannot be used")
    if e.filename is None:  # raised with a message of its own, which names the path
        return str(e.args[0] if len(e.args) == 1 else e)
    return f"'{e.filename}': {what}. Check the path and its permissions, then run it again."


def _user_error(message: str) -> int:
    """Print ``message`` (already telling what, where and what to do) and return 2."""
    try:
        print(f"error: {message}", file=sys.stderr)
    except BrokenPipeError:
        pass
    return 2


def _closed_pipe() -> int:
    """``dlmbench show RUN | head``: the reader went away; stop quietly, like other tools."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0  # the reader chose to stop reading; that is not an error of the command


if __name__ == "__main__":
    sys.exit(main())
