"""The package plan holds: no import cycles, samplers independent of harness, a cheap CLI start.

The import graph is read from the source (every ``import`` statement, function-level ones
included), so a lazy import that calls back up is caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dlmcore", "harness", "samplers", "baselines")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (``from a import b`` → a.b when a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                out.add(n)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g = {}
    for m, p in mods.items():
        # a package's __init__ is not a dependency of its submodules' imports
        g[m] = {d for d in imports_of(p, known) if d != m and not m.startswith(d + ".")}
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    """Finding: runner, executors and cellrun imported each other in a circle."""
    assert find_cycle(graph()) is None


@pytest.mark.parametrize("pkg,forbidden", [("samplers", "harness"), ("dlmcore", "harness")])
def test_lower_layers_import_nothing_above(pkg, forbidden):
    """Finding: a sampler imported the network directly; samplers know only the denoiser."""
    bad = {
        m: sorted(d for d in deps if d.split(".")[0] == forbidden)
        for m, deps in graph().items()
        if m.split(".")[0] == pkg
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_run_layers_point_down():
    """The runner times cells; the sweep chooses the executor; executors call the one-cell code."""
    g = graph()
    order = [
        "harness.run.sweep",
        "harness.run.executors",
        "harness.run.cellrun",
        "harness.run.runner",
    ]
    for i, upper in enumerate(order):
        for lower in order[i + 1 :]:
            assert upper not in g[lower], f"{lower} imports {upper}"
    importers = {m for m, deps in g.items() if "harness.cli" in deps}
    assert importers <= {"harness.__main__"}


def test_harness_folders_show_the_plan():
    top = {p.name for p in (ROOT / "harness").iterdir() if not p.name.startswith("__")}
    assert {"model", "run", "measure", "quality", "report", "train"} <= top
    flat = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "cli.py", "demo.py", "results.py"]


def test_tests_mirror_the_layout():
    for sub in ("model", "run", "measure", "quality", "report", "train"):
        assert list((ROOT / "tests" / "harness" / sub).glob("test_*.py")), sub


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["ls", "samplers"], ["ls", "schedules"], ["ls", "sizes"], ["ls", "checkpoints"]],
)
def test_help_and_ls_import_neither_torch_nor_pandas(argv):
    """Finding: `dlmbench --help` cost 3.6 s of CPU (torch and every command module at start).

    Which modules load is what decides the start-up cost (torch alone is ~1.4 s of CPU here), so
    this checks the cause deterministically instead of timing a noisy machine.
    """
    code = (
        "import sys, contextlib, io\n"
        "from harness.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'pyarrow') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"{argv} imported {out.stdout.strip()}"


def test_module_command_help_lines_match_their_parsers():
    """The stub help of a lazily imported command equals the help its module registers."""
    import argparse

    from harness import cli

    full = cli.build_parser(None)
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name, (_, help_line) in cli.MODULE_COMMANDS.items():
        assert helps[name] == help_line, name


def test_lazy_torch_binds_the_real_module_after_first_use():
    code = (
        "import sys\n"
        "import samplers.mdlm_ancestral as m\n"
        "assert 'torch' not in sys.modules\n"
        "from samplers.lazytorch import LazyTorch\n"
        "assert isinstance(m.torch, LazyTorch)\n"
        "m.torch.zeros(1)\n"
        "import torch\n"
        "assert m.torch is torch\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_dit_and_the_sampler_fakes_implement_the_denoiser_protocol():
    from harness.model.network import DiT, DiTConfig
    from harness.model.protocol import Denoiser
    from tests.samplers import fake_models_b, fakes

    assert isinstance(DiT(DiTConfig.from_size("tiny", vocab_size=17)), Denoiser)
    for cls in (fakes.FixedLogitsModel, fake_models_b.FixedLogitsModel):
        assert all(hasattr(cls, m) for m in ("forward_cached", "new_kv_cache", "block_causal_mask"))
