"""What dlmbench survives in its configs: hostile YAML, huge values, huge grids, bad run ids.

Each test names its finding (issue 11, the config parts). A hostile input must be refused with
one :class:`ConfigError` (exit 2 at the CLI), quickly, in little memory, with short messages.
"""

from __future__ import annotations

import contextlib
import signal
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from dlmcore.configio import ConfigError, parse_scalar
from harness.run import executors
from harness.run.experiment import check_run_id, load_experiment, load_yaml, validate
from harness.run.sweep import run_experiment
from harness.train.loop import load_config

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
"""A 9-level "billion laughs": ``i`` expands to 9**9 ≈ 387 million scalars."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise TimeoutError if the block runs longer: a regression fails instead of hanging."""

    def expire(*_):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def base_config(out: Path) -> dict:
    return {
        "name": "t",
        "checkpoints": {"tiny": {"path": "random:tiny", "vocab_size": 33}},
        "samplers": [{"name": "m", "sampler": "mdlm", "params": {"num_steps": 4}}],
        "seq_lens": [16],
        "batch_sizes": [1],
        "seeds": [0],
        "timing": {"repeats": 2, "warmup": 1},
        "output_dir": str(out),
    }


def write(tmp_path: Path, cfg: dict | str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def problems_of(cfg: dict) -> list[str]:
    _, _, problems = validate(cfg)
    return problems


# --------------------------------------------------------------------------------------------
# 1. Hostile YAML stays cheap
# --------------------------------------------------------------------------------------------


def test_alias_bomb_is_refused_at_load_in_milliseconds_and_little_memory(tmp_path):
    """Finding 1a: a billion-laughs alias bomb is refused by the loader, not expanded later."""
    path = write(tmp_path, BOMB + "name: t\n")
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with deadline(5), pytest.raises(ConfigError) as err:
            load_yaml(path)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 20 * 2**20, (elapsed, peak)
    assert "expands to more than 100000 nodes" in str(err.value) and str(path) in str(err.value)


def test_alias_bomb_in_a_training_config_and_an_override_is_refused(tmp_path):
    """Finding 1a: every loader is the bounded one (training configs, CLI override values)."""
    with deadline(5):
        with pytest.raises(ConfigError, match="expands to more than"):
            load_config(write(tmp_path, BOMB, "train.yaml"))
        with pytest.raises(ConfigError, match="alias uses"):
            parse_scalar("[" + ", ".join(["&a 1"] + ["*a"] * 1001) + "]")


def test_recursive_alias_and_deep_nesting_are_refused_not_a_recursion_error(tmp_path):
    """Finding 1a: a self-referencing alias or 10^4 nested lists is a ConfigError."""
    with pytest.raises(ConfigError, match="recursive"):
        load_yaml(write(tmp_path, "name: &a [*a]\n"))
    with pytest.raises(ConfigError, match="nesting is deeper"):
        load_yaml(write(tmp_path, "name: " + "[" * 10_000 + "]" * 10_000 + "\n"))


def test_duplicate_keys_are_an_error_naming_the_key_and_lines(tmp_path):
    """Finding 1b: a repeated key is refused (YAML would silently keep the last)."""
    text = yaml.safe_dump(base_config(tmp_path)) + "seeds: [1]\n"
    with pytest.raises(ConfigError) as err:
        load_experiment(write(tmp_path, text))
    assert "key 'seeds' appears twice" in str(err.value) and "lines" in str(err.value)
    with pytest.raises(ConfigError, match="key 'lr' appears twice"):
        load_config(write(tmp_path, "lr: 1.0\nlr: 2.0\n", "train.yaml"))


def test_merge_keys_may_still_override(tmp_path):
    """Finding 1b: ``<<`` merges are not duplicates; the mapping's own key wins."""
    text = "base: &b {x: 1, y: 2}\nname: {<<: *b, x: 3}\n"
    assert load_yaml(write(tmp_path, text))["name"] == {"x": 3, "y": 2}


def test_non_utf8_and_syntax_errors_are_config_errors_naming_the_file(tmp_path):
    """Finding 1c: undecodable bytes or broken YAML → ConfigError naming the file."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        load_experiment(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
    broken = write(tmp_path, "lr: [1, 2\n", "train.yaml")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(broken)
    assert str(broken) in str(err.value)


def test_corrupt_run_config_gives_status_problems_not_a_traceback(tmp_path):
    """Finding 1: the run folder's config.yaml is read by the same loader (dlmbench status)."""
    (tmp_path / "config.yaml").write_text("name: a\nname: b\n")
    cells, problems = executors.cells_of_run(tmp_path)
    assert cells == [] and "appears twice" in problems[0]


# --------------------------------------------------------------------------------------------
# 2. No message reprs a raw value in full
# --------------------------------------------------------------------------------------------


def test_huge_values_and_keys_are_quoted_short(tmp_path):
    """Finding 2: a megabyte value or key never makes a megabyte message."""
    huge = "x" * 1_000_000
    cfg = base_config(tmp_path)
    cfg.update(name=huge, device=huge, dtype=huge, seeds=huge, seq_lens=[16, huge])
    cfg[huge] = 1
    cfg["timing"]["mode"] = huge
    cfg["samplers"][0]["params"] = {huge: 1, "num_steps": huge}
    cfg["checkpoints"][huge] = {"path": huge}
    problems = problems_of(cfg)
    assert len(problems) >= 8, problems
    assert all(len(p) < 600 for p in problems), max(len(p) for p in problems)
    overrides = ["timing.repeats=" + huge, huge, huge + "=1"]
    with pytest.raises(ConfigError) as err:
        load_experiment(write(tmp_path, base_config(tmp_path)), overrides)
    assert len(str(err.value)) < 2000


# --------------------------------------------------------------------------------------------
# 3. A value that validates is storable
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("seeds", [2**70], "'seeds[0]' is 1180591620717411303424; integers must fit in int64"),
        ("seeds", [2**63], "'seeds[0]' is 9223372036854775808; integers must fit"),
        ("seeds", [-1], "'seeds' contains -1"),
        ("seq_lens", [1.0e30], "'seq_lens[0]' is 1e+30 (float); expected an integer"),
        ("seq_lens", [2**31], "'seq_lens' contains 2147483648; values must lie in 1 … 2147483647"),
        ("batch_sizes", [2.0], "'batch_sizes[0]' is 2.0 (float); expected an integer"),
        ("batch_sizes", [2**40], "'batch_sizes' contains 1099511627776"),
        ("timing", {"repeats": 2**40, "max_repeats": 2**41}, "'repeats' is 1099511627776"),
        ("timing", {"warmup": 2**40}, "'warmup' is 1099511627776"),
        ("timing", {"min_time_s": float("inf")}, "'min_time_s' is inf"),
    ],
)
def test_out_of_range_sizes_and_seeds_are_refused(tmp_path, field, value, fragment):
    """Finding 3: seeds < 2**63, sizes ≤ 2**31 - 1, integers never coerced from floats."""
    cfg = base_config(tmp_path)
    cfg[field] = value
    problems = problems_of(cfg)
    assert any(fragment in p for p in problems), problems


def test_sampler_integers_must_fit_int64_and_largest_seed_is_accepted(tmp_path):
    """Finding 3: ``num_steps: 2**70`` is refused; seed 2**63 - 1 is the top of the range."""
    cfg = base_config(tmp_path)
    cfg["samplers"][0]["params"]["num_steps"] = 2**70
    assert any("must fit in int64" in p for p in problems_of(cfg))
    cfg = base_config(tmp_path)
    cfg["seeds"] = [2**63 - 1]
    assert problems_of(cfg) == []


# --------------------------------------------------------------------------------------------
# 4. A huge grid is refused by arithmetic
# --------------------------------------------------------------------------------------------


def test_ten_million_cell_grid_is_refused_in_seconds(tmp_path):
    """Finding 4: the grid size is computed before expanding; the limit names ``max_cells``."""
    cfg = base_config(tmp_path)
    cfg.update(
        seq_lens=list(range(16, 16 * 101, 16)),
        batch_sizes=list(range(1, 101)),
        seeds=list(range(1000)),
    )
    t0 = time.perf_counter()
    with deadline(60):
        problems = problems_of(cfg)
    assert time.perf_counter() - t0 < 10
    assert "10000000 cells; the limit is 10000 (set `max_cells` to raise it" in problems[0]


def test_over_limit_grid_still_checks_every_axis_value(tmp_path):
    """Finding 4/5: past the limit no cell is built, but each listed value is still checked."""
    cfg = base_config(tmp_path)
    cfg["max_cells"] = 3
    cfg["samplers"][0]["params"] = {"num_steps": [4, 0, 8], "temperature": [1.0, -1.0]}
    problems = problems_of(cfg)
    assert any("6 cells; the limit is 3" in p for p in problems), problems
    assert any("'num_steps' is 0" in p for p in problems), problems
    assert any("'temperature' is -1.0" in p for p in problems), problems
    cfg["max_cells"] = 6
    assert not any("limit" in p for p in problems_of(cfg))


def test_duplicate_checks_are_linear(tmp_path):
    """Finding 4: 10^5 repeated seeds are reported in well under a second (no list.count)."""
    cfg = base_config(tmp_path)
    cfg["seeds"] = list(range(50_000)) * 2
    t0 = time.perf_counter()
    with deadline(30):
        problems = problems_of(cfg)
    assert time.perf_counter() - t0 < 5
    assert any("'seeds' repeats" in p and len(p) < 300 for p in problems), problems


# --------------------------------------------------------------------------------------------
# 5. Every problem at once
# --------------------------------------------------------------------------------------------


def test_problems_in_three_entries_batches_and_timing_come_in_one_error(tmp_path):
    """Finding 5: a bad sampler config no longer stops validation at the first entry."""
    cfg = base_config(tmp_path)
    cfg["samplers"] = [
        {"name": "a", "sampler": "mdlm", "params": {"num_steps": 0}},
        {"name": "b", "sampler": "bd3lm", "params": {"block_size": 3}},
        {"name": "c", "sampler": "esolm", "params": {"alpha0_eval": 7}},
    ]
    cfg["batch_sizes"] = [0, "x"]
    cfg["timing"]["repeats"] = 0
    with pytest.raises(ConfigError) as err:
        load_experiment(write(tmp_path, cfg))
    text = str(err.value)
    for fragment in (
        "'num_steps' is 0",
        "not divisible by block_size 3",
        "'alpha0_eval' is 7",
        "'batch_sizes' contains 0",
        "'batch_sizes[1]' is 'x'",
        "'repeats' is 0",
    ):
        assert fragment in text, f"{fragment!r} not in:\n{text}"


# --------------------------------------------------------------------------------------------
# 6. bfloat16 on cpu
# --------------------------------------------------------------------------------------------


def test_bfloat16_on_cpu_is_refused_at_validate(tmp_path):
    """Finding 6: bf16 on a CPU is refused up front, with float32 or a GPU suggested."""
    cfg = base_config(tmp_path)
    cfg["dtype"] = "bfloat16"
    problems = problems_of(cfg)
    assert any("'bfloat16'" in p and "float32" in p and "cuda" in p for p in problems), problems


# --------------------------------------------------------------------------------------------
# 7. Run ids
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", ".", "..", "../escape", "a/b", "/abs", "x" * 300, "a b"])
def test_bad_run_ids_are_refused(bad):
    """Finding 7: a forced run id is one safe folder name."""
    assert check_run_id(bad)
    assert all(len(p) < 400 for p in check_run_id(bad))


def test_good_run_id_passes_and_a_bad_one_writes_nothing(tmp_path):
    """Finding 7: run_experiment refuses ``--run-id ../x`` before anything is written."""
    assert check_run_id("smoke-1.b+2") == []
    out = tmp_path / "results"
    path = write(tmp_path, base_config(out))
    with pytest.raises(ConfigError, match="run id"):
        run_experiment(path, run_id="../escape", progress=False)
    assert not out.exists() and not (tmp_path / "escape").exists()
