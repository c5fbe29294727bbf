"""Published numbers as data: one CSV per paper table, the claims built on them, GPU presets.

Files (``baselines/data/``, described in ``baselines/data/README.md``):

* ``<paper>_<table>.csv``, one row per published configuration. Provenance columns (``paper``,
  ``arxiv_id``, ``arxiv_version``, ``table_label``, ``hardware``, ``batch_size``, ``seq_len``,
  ``nfe``, ``time_units``, ``statistic``, ``caveats``, ``notes``) sit next to value columns named
  exactly like the harness's results columns (``sampler``, ``p_num_steps``, ``p_block_size``,
  ``p_alpha0_eval``, ``wall_s_mean``, ``wall_s_std``, ``gen_ppl``, ``gen_ppl_mean_per_sample``,
  ``mauve``, ``entropy_nats``, ...), and the tolerance bands ``tol_*`` of the claims check.
* ``claims.yaml``: the published speed ratios, each naming the two rows it derives from.
* ``hardware.yaml``: peak dense bf16 FLOP/s and memory bandwidth per GPU, with sources.

Every loader validates its file and reports every problem at once in one
:class:`BaselineDataError` whose lines name the file, the line and row id, and the column.
Files are read once per process and folder (cached); the loaders return copies.

Example:
    >>> from baselines import load_baselines, load_claims
    >>> t11 = load_baselines("esolm_t11")
    >>> t11.set_index("row_id").loc["esolm_t11_esolm_L8192", "wall_s_mean"]
    82.1
    >>> load_claims().set_index("claim_id").loc["t11_mdlm_over_esolm_L8192", "published_value"]
    66.2
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from dlmcore.errors import UserError
from dlmcore.registry import did_you_mean

__all__ = [
    "DATA_DIR",
    "BaselineDataError",
    "load_baselines",
    "load_claims",
    "load_hardware",
    "table_names",
]

DATA_DIR = Path(__file__).resolve().parent / "data"

# ---------------------------------------------------------------------------------------------
# The table schema
# ---------------------------------------------------------------------------------------------

STR_COLUMNS = (
    "row_id", "paper", "arxiv_id", "arxiv_version", "table", "table_label", "method_label",
    "sampler", "variant", "checkpoint", "hardware", "nfe_kind", "timing_mode", "statistic",
    "time_printed", "time_units", "caveats", "notes",
)  # fmt: skip
INT_COLUMNS = (
    "batch_size", "seq_len", "p_num_steps", "p_block_size", "p_steps_per_block", "p_num_tries",
    "nfe", "samples_timed", "n_samples", "quality_batch_size",
)  # fmt: skip
FLOAT_COLUMNS = (
    "alpha0_train", "p_alpha0_eval", "p_top_p", "wall_s_mean", "wall_s_std", "gen_ppl",
    "gen_ppl_mean_per_sample", "mauve", "entropy_nats", "tol_wall_rel", "tol_gen_ppl_rel",
    "tol_mauve_abs", "tol_entropy_abs",
)  # fmt: skip
TABLE_COLUMNS = STR_COLUMNS + INT_COLUMNS + FLOAT_COLUMNS
REQUIRED = (
    "row_id", "paper", "arxiv_id", "arxiv_version", "table", "table_label", "method_label",
    "sampler", "seq_len",
)  # fmt: skip
PARAM_COLUMNS = tuple(c for c in TABLE_COLUMNS if c.startswith("p_"))

#: Methods that appear in the published tables. The harness implements the first four.
KNOWN_SAMPLERS = ("ar", "mdlm", "bd3lm", "esolm", "sedd", "ssdlm")
#: Which results column a published NFE corresponds to (design.md, Work columns).
NFE_KINDS = ("nfe_total", "nfe_denoise", "nfe_expected", "nfe_profile_sim")
TIMING_MODES = ("full", "profile", "unknown")
STATISTICS = ("mean", "median", "unspecified")
TIME_UNITS = {"s": 1.0, "min": 60.0}
CAVEATS = {
    "nfe_inferred": "the NFE is our deduction, not printed",
    "nfe_rounded": "the NFE is printed rounded (1K, 40K, ...)",
    "timing_mode_inferred": "the timing mode is our deduction",
    "hardware_unverified": "the GPU is not restated for this table",
    "rounded_cells": "some cells are rounded in our transcription; check the paper",
    "entropy_range": "the entropy is printed as a range for a group of rows, left empty",
    "time_shared": "the time is that of another row with the same schedule (network-only timing)",
    "time_extrapolated": "the time looks extrapolated rather than measured",
}
CLAIM_SOURCE_KINDS = ("derived", "abstract", "text", "inferred")
CLAIM_ROUNDING = ("nearest", "none", "range")
_ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}$")
_ARXIV_VERSION = re.compile(r"^(v\d+|unverified)$")
_PRINTED_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:±\s*([0-9]+(?:\.[0-9]+)?))?\s*$")


class BaselineDataError(UserError, ValueError):
    """One or more problems in the baselines data files; ``problems`` holds each as a sentence."""

    def __init__(self, problems: list[str], header: str = "Invalid baselines data") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{header} ({len(self.problems)} problem(s)):\n{lines}\n"
            "Fix the named cells (baselines/data/README.md describes every column and rule)."
        )


# ---------------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------------


def table_names(data_dir: str | Path | None = None) -> list[str]:
    """Names of the published tables (the CSV file stems), sorted."""
    return sorted(p.stem for p in Path(data_dir or DATA_DIR).glob("*.csv"))


def load_baselines(table: str | None = None, *, data_dir: str | Path | None = None) -> pd.DataFrame:
    """The published rows of one table, or of every table, validated.

    Args:
        table: a table name such as ``"esolm_t11"`` (a CSV stem, see :func:`table_names`);
            ``None`` for all tables concatenated.
        data_dir: folder holding the files; the package's ``baselines/data`` by default.

    Returns:
        One row per published configuration: the file's columns, with integer columns as
        nullable ``Int64`` and values as ``float64``, plus ``s_per_sample`` (``wall_s_mean /
        samples_timed``), the NFE copied into the results column named by ``nfe_kind``
        (``nfe_total``, ``nfe_denoise``, ``nfe_expected``, ``nfe_profile_sim``) and ``source``
        (paper, arXiv id and version, table).

    Raises:
        BaselineDataError: an unknown table name, or any invalid cell in any file (all listed).
    """
    frame = _load_tables(str(Path(data_dir or DATA_DIR).resolve())).copy()
    if table is None:
        return frame
    names = sorted(frame["table"].unique())
    if table not in names:
        hint = did_you_mean(table, names)
        msg = f"unknown table {table!r}.{hint} Available: {', '.join(names)}."
        raise BaselineDataError([msg], header="Unknown baselines table")
    return frame[frame["table"] == table].reset_index(drop=True)


def load_claims(*, data_dir: str | Path | None = None) -> pd.DataFrame:
    """The published speed ratios with the rows they derive from, validated.

    Args:
        data_dir: folder holding ``claims.yaml`` and the tables; the package's by default.

    Returns:
        One row per claim: ``claim_id``, ``claim_text``, ``source_kind``, ``location``, ``paper``,
        ``arxiv_id``, ``arxiv_version``, ``metric``, ``numerator_row``/``denominator_row`` and
        for each side ``*_sampler``, ``*_label``, ``*_params`` (dict of its ``p_*`` values),
        ``*_seq_len``, ``*_value``; the shared ``seq_len`` (NA when the sides differ),
        ``batch_size``, ``hardware``; ``published_value`` / ``published_lo`` / ``published_hi``,
        ``decimals``, ``rounding``, ``tol_rel``, the band ``band_lo``/``band_hi``,
        ``table_value`` (the ratio recomputed from the rows), ``source`` and ``notes``.

    Raises:
        BaselineDataError: every problem in ``claims.yaml`` (or in the tables it reads).
    """
    return _load_claims(str(Path(data_dir or DATA_DIR).resolve())).copy()


def load_hardware(*, data_dir: str | Path | None = None) -> pd.DataFrame:
    """GPU presets: peak dense bf16 throughput and memory bandwidth, with provenance.

    Args:
        data_dir: folder holding ``hardware.yaml``; the package's by default.

    Returns:
        One row per device: ``name`` (the value used in the tables' ``hardware`` column),
        ``full_name``, ``architecture``, ``memory_gb``, ``tdp_w``, ``peak_bf16_dense_tflops``,
        ``mem_bandwidth_gb_s``, ``peak_bf16_dense_flop_s`` and ``mem_bandwidth_bytes_s`` (SI
        units), ``verified`` (False: not checked against the primary datasheet),
        ``derivation``, ``sources`` ("; "-joined) and ``used_by``.

    Raises:
        BaselineDataError: every problem in ``hardware.yaml``.
    """
    return _load_hardware(str(Path(data_dir or DATA_DIR).resolve())).copy()


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_tables(data_dir: str) -> pd.DataFrame:
    hardware = set(_load_hardware(data_dir)["name"])
    paths = sorted(Path(data_dir).glob("*.csv"))
    problems: list[str] = []
    if not paths:
        problems.append(f"{data_dir}: no *.csv tables found. Point data_dir at baselines/data.")
    frames = [f for f in (_read_table(p, hardware, problems) for p in paths) if f is not None]
    ids = pd.concat([f["row_id"] for f in frames]) if frames else pd.Series([], dtype=str)
    dup = sorted(set(ids[ids.duplicated()].dropna()))
    problems += [f"row_id {r!r} appears more than once; row ids must be unique." for r in dup]
    if problems:
        raise BaselineDataError(problems)
    return _add_derived_columns(pd.concat(frames, ignore_index=True))


def _read_table(path: Path, hardware: set[str], problems: list[str]) -> pd.DataFrame | None:
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    name = _display(path)
    missing = [c for c in REQUIRED if c not in raw.columns]
    unknown = [c for c in raw.columns if c not in TABLE_COLUMNS]
    problems += [f"{name}: required column {c!r} is missing." for c in missing]
    problems += [
        f"{name}: unknown column {c!r}.{did_you_mean(c, TABLE_COLUMNS)}"
        f" Allowed: {', '.join(TABLE_COLUMNS)}."
        for c in unknown
    ]
    if missing or unknown:
        return None
    raw = raw.reindex(columns=list(TABLE_COLUMNS), fill_value="")
    out: dict[str, list[Any]] = {c: [] for c in TABLE_COLUMNS}
    for i, rec in enumerate(raw.to_dict("records")):
        where = f"{name}: line {i + 2} (row_id {rec['row_id'] or '?'!r})"
        row = _parse_row(rec, where, problems)
        _check_row(row, where, path.stem, hardware, problems)
        for c in TABLE_COLUMNS:
            out[c].append(row[c])
    frame = pd.DataFrame(out)
    for c in INT_COLUMNS:
        frame[c] = pd.array(frame[c].tolist(), dtype="Int64")
    for c in FLOAT_COLUMNS:
        frame[c] = frame[c].astype("float64")
    return frame


def _parse_row(rec: dict[str, str], where: str, problems: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for c in STR_COLUMNS:
        row[c] = rec[c].strip() or None
    for c in INT_COLUMNS:
        row[c] = _parse_number(rec[c], c, where, problems, integer=True)
    for c in FLOAT_COLUMNS:
        row[c] = _parse_number(rec[c], c, where, problems, integer=False)
    return row


def _parse_number(text: str, col: str, where: str, problems: list[str], *, integer: bool) -> Any:
    text = text.strip()
    if not text:
        return None if integer else math.nan
    try:
        value = float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        problems.append(
            f"{where}, column {col!r}: {text!r} is not {kind}; write {kind} or leave empty."
        )
        return None if integer else math.nan
    if integer:
        if not value.is_integer():
            problems.append(f"{where}, column {col!r}: {text!r} is not an integer.")
            return None
        return int(value)
    return value


def _check_row(
    row: dict[str, Any], where: str, stem: str, hardware: set[str], problems: list[str]
) -> None:
    """Append a sentence to ``problems`` for each rule ``row`` breaks (README.md, Rules)."""

    def bad(col: str, msg: str) -> None:
        problems.append(f"{where}, column {col!r}: {msg}")

    for c in REQUIRED:
        if row[c] is None:
            bad(c, "is empty; this column is required.")
    _check_enum(row, "sampler", KNOWN_SAMPLERS, bad)
    _check_enum(row, "nfe_kind", NFE_KINDS, bad)
    _check_enum(row, "timing_mode", TIMING_MODES, bad)
    _check_enum(row, "statistic", STATISTICS, bad)
    _check_enum(row, "time_units", tuple(TIME_UNITS), bad)
    if row["table"] is not None and row["table"] != stem:
        bad("table", f"is {row['table']!r} but the file is {stem}.csv; they must agree.")
    if row["arxiv_id"] and not _ARXIV_ID.match(row["arxiv_id"]):
        bad("arxiv_id", f"{row['arxiv_id']!r} is not an arXiv id like '2506.01928'.")
    if row["arxiv_version"] and not _ARXIV_VERSION.match(row["arxiv_version"]):
        bad("arxiv_version", f"{row['arxiv_version']!r}; write 'v<N>' or 'unverified'.")
    for caveat in (row["caveats"] or "").split(";"):
        if caveat and caveat not in CAVEATS:
            hint = did_you_mean(caveat, list(CAVEATS))
            bad("caveats", f"unknown caveat {caveat!r}.{hint} Known: {', '.join(CAVEATS)}.")
    if row["hardware"] is not None and row["hardware"] not in hardware:
        hint = did_you_mean(row["hardware"], sorted(hardware))
        bad("hardware", f"{row['hardware']!r} is not in hardware.yaml.{hint} Add it there first.")
    if (row["nfe"] is None) != (row["nfe_kind"] is None):
        bad("nfe_kind", "'nfe' and 'nfe_kind' must be given together (nfe_kind names our column).")
    _check_ranges(row, bad)
    _check_timing(row, bad)
    _check_tolerances(row, bad)


def _check_enum(row: dict[str, Any], col: str, allowed: tuple[str, ...], bad: Any) -> None:
    value = row[col]
    if value is not None and value not in allowed:
        bad(
            col,
            f"{value!r} is not allowed.{did_you_mean(value, allowed)}"
            f" Allowed: {', '.join(allowed)}.",
        )


def _check_ranges(row: dict[str, Any], bad: Any) -> None:
    for c in INT_COLUMNS:
        if row[c] is not None and row[c] < 1:
            bad(c, f"{row[c]} must be ≥ 1.")
    checks = {
        "wall_s_mean": (lambda v: v > 0, "> 0"),
        "wall_s_std": (lambda v: v >= 0, "≥ 0"),
        "gen_ppl": (lambda v: v >= 1, "≥ 1 (a perplexity)"),
        "gen_ppl_mean_per_sample": (lambda v: v >= 1, "≥ 1 (a perplexity)"),
        "mauve": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "p_alpha0_eval": (lambda v: 0 < v <= 1, "in (0, 1]"),
        "alpha0_train": (lambda v: 0 < v <= 1, "in (0, 1]"),
        "p_top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    }
    for c, (ok, text) in checks.items():
        if not math.isnan(row[c]) and not ok(row[c]):
            bad(c, f"{row[c]} must be {text}.")
    ent = row["entropy_nats"]
    if not math.isnan(ent) and row["seq_len"] is not None:
        top = math.log(row["seq_len"])
        if not 0 < ent <= top:
            bad(
                "entropy_nats", f"{ent} must be in (0, ln L = {top:.2f}] (unigram entropy in nats)."
            )


def _check_timing(row: dict[str, Any], bad: Any) -> None:
    """A timed row says how it was timed, and its printed time converts to wall_s_mean exactly."""
    if math.isnan(row["wall_s_mean"]):
        if not math.isnan(row["wall_s_std"]):
            bad("wall_s_std", "is set but 'wall_s_mean' is empty.")
        if row["time_printed"] is not None:
            bad("time_printed", "is set but 'wall_s_mean' is empty.")
        return
    for c in (
        "hardware",
        "time_printed",
        "time_units",
        "samples_timed",
        "statistic",
        "timing_mode",
    ):
        if row[c] is None:
            bad(c, "is empty; every timed row needs it.")
    if row["time_printed"] is None or row["time_units"] not in TIME_UNITS:
        return
    m = _PRINTED_TIME.match(row["time_printed"])
    if m is None:
        bad("time_printed", f"{row['time_printed']!r}; write '13.3' or '13.3 ± 0.9' as printed.")
        return
    factor = TIME_UNITS[row["time_units"]]
    mean, std = float(m.group(1)) * factor, m.group(2)
    if not math.isclose(mean, row["wall_s_mean"], rel_tol=1e-9):
        bad(
            "wall_s_mean",
            f"{row['wall_s_mean']} ≠ time_printed {row['time_printed']!r} in "
            f"{row['time_units']} = {mean} s.",
        )
    std_val = math.nan if std is None else float(std) * factor
    if not (math.isnan(std_val) and math.isnan(row["wall_s_std"])) and not math.isclose(
        std_val, row["wall_s_std"], rel_tol=1e-9
    ):
        bad(
            "wall_s_std",
            f"{row['wall_s_std']} does not match time_printed {row['time_printed']!r}.",
        )


def _check_tolerances(row: dict[str, Any], bad: Any) -> None:
    """Each printed value carries its band, and a band exists only next to a value."""
    pairs = {
        "tol_wall_rel": ("wall_s_mean",),
        "tol_gen_ppl_rel": ("gen_ppl", "gen_ppl_mean_per_sample"),
        "tol_mauve_abs": ("mauve",),
        "tol_entropy_abs": ("entropy_nats",),
    }
    for tol, values in pairs.items():
        has_value = any(not math.isnan(row[v]) for v in values)
        has_tol = not math.isnan(row[tol])
        if has_value and not has_tol:
            bad(
                tol,
                f"is empty but {' / '.join(values)} is set; give its band (README.md, Tolerances).",
            )
        elif has_tol and not has_value:
            bad(tol, f"is set but {' / '.join(values)} is empty.")
        elif has_tol and row[tol] <= 0:
            bad(tol, f"{row[tol]} must be > 0.")


def _add_derived_columns(frame: pd.DataFrame) -> pd.DataFrame:
    frame["s_per_sample"] = frame["wall_s_mean"] / frame["samples_timed"].astype("float64")
    for kind in NFE_KINDS:
        frame[kind] = frame["nfe"].where(frame["nfe_kind"] == kind).astype("Int64")
    frame["source"] = [
        f"{p} (arXiv {a}{'' if v == 'unverified' else v}) {t}"
        for p, a, v, t in zip(
            frame["paper"], frame["arxiv_id"], frame["arxiv_version"], frame["table_label"]
        )
    ]
    return frame


# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------

CLAIM_KEYS = {
    "claim_id": str, "claim_text": str, "source_kind": str, "location": str, "paper": str,
    "arxiv_id": str, "arxiv_version": str, "metric": str, "numerator_row": str,
    "denominator_row": str, "published_value": float, "published_lo": float,
    "published_hi": float, "decimals": int, "rounding": str, "tol_rel": float, "notes": str,
}  # fmt: skip
CLAIM_REQUIRED = (
    "claim_id", "claim_text", "source_kind", "location", "paper", "arxiv_id", "arxiv_version",
    "metric", "numerator_row", "denominator_row", "rounding", "tol_rel",
)  # fmt: skip


@functools.lru_cache(maxsize=8)
def _load_claims(data_dir: str) -> pd.DataFrame:
    path = Path(data_dir) / "claims.yaml"
    name = _display(path)
    doc = _read_yaml(path)
    problems: list[str] = []
    items = doc.get("claims") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise BaselineDataError([f"{name}: expected a top-level 'claims:' list."])
    rows = _load_tables(data_dir).set_index("row_id")
    out = []
    for i, item in enumerate(items):
        cid = item.get("claim_id", "?") if isinstance(item, dict) else "?"
        where = f"{name}: claim #{i + 1} ({cid!r})"
        claim = _check_claim(item, where, rows, problems)
        if claim is not None:
            out.append(claim)
    ids = [c["claim_id"] for c in out]
    problems += [
        f"{name}: claim_id {c!r} appears more than once."
        for c in sorted({c for c in ids if ids.count(c) > 1})
    ]
    if problems:
        raise BaselineDataError(problems)
    frame = pd.DataFrame(out)
    for c in ("seq_len", "batch_size", "numerator_seq_len", "denominator_seq_len", "decimals"):
        frame[c] = pd.array(frame[c].tolist(), dtype="Int64")
    return frame


def _check_claim(item: Any, where: str, rows: pd.DataFrame, problems: list[str]) -> dict | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: expected a mapping, got {type(item).__name__}.")
        return None
    n0 = len(problems)
    for k in item:
        if k not in CLAIM_KEYS:
            problems.append(f"{where}: unknown key {k!r}.{did_you_mean(k, list(CLAIM_KEYS))}")
    for k in CLAIM_REQUIRED:
        if item.get(k) in (None, ""):
            problems.append(f"{where}, key {k!r}: is missing; it is required.")
    claim = {k: item.get(k) for k in CLAIM_KEYS}
    for k, typ in CLAIM_KEYS.items():
        claim[k] = _coerce_claim_value(claim[k], typ, f"{where}, key {k!r}", problems)
    _check_claim_values(claim, where, problems)
    sides = {}
    for side in ("numerator", "denominator"):
        rid = claim[f"{side}_row"]
        if rid is None:
            continue
        if rid not in rows.index:
            hint = did_you_mean(rid, list(rows.index))
            problems.append(f"{where}, key '{side}_row': row {rid!r} is in no table.{hint}")
            continue
        sides[side] = rows.loc[rid]
    if len(problems) > n0 or len(sides) < 2:
        return None
    return _claim_record(claim, sides, where, problems)


def _coerce_claim_value(value: Any, typ: type, where: str, problems: list[str]) -> Any:
    if value is None or value == "":
        return math.nan if typ is float else None
    if typ is str:
        return str(value)
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        problems.append(f"{where}: {value!r} is not an integer.")
        return None
    if typ is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        problems.append(f"{where}: {value!r} is not a number.")
        return math.nan
    return typ(value)


def _check_claim_values(claim: dict[str, Any], where: str, problems: list[str]) -> None:
    def bad(key: str, msg: str) -> None:
        problems.append(f"{where}, key {key!r}: {msg}")

    if claim["source_kind"] is not None and claim["source_kind"] not in CLAIM_SOURCE_KINDS:
        bad("source_kind", f"{claim['source_kind']!r}; allowed: {', '.join(CLAIM_SOURCE_KINDS)}.")
    if claim["arxiv_version"] and not _ARXIV_VERSION.match(claim["arxiv_version"]):
        bad("arxiv_version", f"{claim['arxiv_version']!r}; write 'v<N>' or 'unverified'.")
    rounding = claim["rounding"]
    if rounding is not None and rounding not in CLAIM_ROUNDING:
        bad("rounding", f"{rounding!r}; allowed: {', '.join(CLAIM_ROUNDING)}.")
    if rounding == "range":
        lo, hi = claim["published_lo"], claim["published_hi"]
        if math.isnan(lo) or math.isnan(hi) or not 0 < lo < hi:
            bad(
                "published_lo",
                f"a range claim needs 0 < published_lo < published_hi, got {lo}, {hi}.",
            )
    elif rounding in ("nearest", "none"):
        if math.isnan(claim["published_value"]) or claim["published_value"] <= 0:
            bad("published_value", f"needs a positive number, got {claim['published_value']}.")
        if claim["decimals"] is None or claim["decimals"] < 0:
            bad("decimals", f"needs the printed number of decimals (≥ 0), got {claim['decimals']}.")
    if not math.isnan(claim["tol_rel"]) and claim["tol_rel"] <= 0:
        bad("tol_rel", f"{claim['tol_rel']} must be > 0.")


def _claim_record(
    claim: dict, sides: dict[str, pd.Series], where: str, problems: list[str]
) -> dict | None:
    metric = claim["metric"]
    rec = dict(claim)
    for side, row in sides.items():
        if metric not in row.index or pd.isna(row[metric]):
            problems.append(f"{where}, key 'metric': row {row.name!r} has no {metric!r} value.")
            return None
        rec[f"{side}_sampler"] = row["sampler"]
        rec[f"{side}_label"] = row["method_label"]
        rec[f"{side}_params"] = {c: _py(row[c]) for c in PARAM_COLUMNS if not pd.isna(row[c])}
        rec[f"{side}_seq_len"] = int(row["seq_len"])
        rec[f"{side}_value"] = float(row[metric])
    num, den = sides["numerator"], sides["denominator"]
    for col in ("hardware", "batch_size"):
        if not (pd.isna(num[col]) and pd.isna(den[col])) and num[col] != den[col]:
            problems.append(
                f"{where}: the rows differ in {col!r} ({num[col]} vs {den[col]}); a published "
                "ratio must compare rows measured the same way."
            )
            return None
    rec["seq_len"] = int(num["seq_len"]) if num["seq_len"] == den["seq_len"] else None
    rec["batch_size"] = None if pd.isna(num["batch_size"]) else int(num["batch_size"])
    rec["hardware"] = num["hardware"]
    rec["table_value"] = rec["numerator_value"] / rec["denominator_value"]
    lo = claim["published_lo"] if claim["rounding"] == "range" else claim["published_value"]
    hi = claim["published_hi"] if claim["rounding"] == "range" else claim["published_value"]
    rec["band_lo"] = lo / (1 + claim["tol_rel"])
    rec["band_hi"] = hi * (1 + claim["tol_rel"])
    version = "" if claim["arxiv_version"] == "unverified" else claim["arxiv_version"]
    rec["source"] = f"{claim['paper']} (arXiv {claim['arxiv_id']}{version}) {claim['location']}"
    return rec


# ---------------------------------------------------------------------------------------------
# Hardware
# ---------------------------------------------------------------------------------------------

HARDWARE_KEYS = {
    "full_name": str, "architecture": str, "memory_gb": float, "tdp_w": float,
    "peak_bf16_dense_tflops": float, "mem_bandwidth_gb_s": float, "verified": bool,
    "derivation": str, "sources": list, "used_by": str,
}  # fmt: skip


@functools.lru_cache(maxsize=8)
def _load_hardware(data_dir: str) -> pd.DataFrame:
    path = Path(data_dir) / "hardware.yaml"
    name = _display(path)
    doc = _read_yaml(path)
    devices = doc.get("devices") if isinstance(doc, dict) else None
    if not isinstance(devices, dict) or not devices:
        raise BaselineDataError(
            [f"{name}: expected a top-level 'devices:' mapping of GPU name → fields."]
        )
    problems: list[str] = []
    rows = []
    for dev, fields in devices.items():
        where = f"{name}: device {dev!r}"
        if not isinstance(fields, dict):
            problems.append(f"{where}: expected a mapping of fields.")
            continue
        problems += [
            f"{where}: unknown key {k!r}.{did_you_mean(k, list(HARDWARE_KEYS))}"
            for k in fields
            if k not in HARDWARE_KEYS
        ]
        row: dict[str, Any] = {"name": str(dev)}
        for key, typ in HARDWARE_KEYS.items():
            row[key] = _check_hardware_field(
                fields.get(key), typ, f"{where}, key {key!r}", problems
            )
        rows.append(row)
    if problems:
        raise BaselineDataError(problems)
    frame = pd.DataFrame(rows)
    frame["sources"] = ["; ".join(map(str, s)) for s in frame["sources"]]
    frame["peak_bf16_dense_flop_s"] = frame["peak_bf16_dense_tflops"] * 1e12
    frame["mem_bandwidth_bytes_s"] = frame["mem_bandwidth_gb_s"] * 1e9
    return frame


def _check_hardware_field(value: Any, typ: type, where: str, problems: list[str]) -> Any:
    if value is None:
        problems.append(f"{where}: is missing; it is required.")
        return None
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            problems.append(f"{where}: {value!r} must be a positive number.")
            return math.nan
        return float(value)
    if typ is bool and not isinstance(value, bool):
        problems.append(f"{where}: {value!r} must be true or false.")
        return None
    if typ is list and (not isinstance(value, list) or not value):
        problems.append(f"{where}: {value!r} must be a non-empty list of sources.")
        return []
    if typ is str and not isinstance(value, str):
        problems.append(f"{where}: {value!r} must be text.")
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise BaselineDataError([f"{_display(path)}: file not found."]) from None
    except yaml.YAMLError as err:
        raise BaselineDataError([f"{_display(path)}: not valid YAML: {err}"]) from None


def _display(path: Path) -> str:
    """``baselines/data/<file>`` for the package's files, the full path otherwise."""
    try:
        return str(path.resolve().relative_to(DATA_DIR.parent.parent))
    except ValueError:
        return str(path)


def _py(value: Any) -> Any:
    """A numpy/pandas scalar as a plain Python int or float."""
    f = float(value)
    return int(f) if f.is_integer() else f
