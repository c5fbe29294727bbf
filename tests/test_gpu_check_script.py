"""The prepared GPU check runs end to end on the CPU at a tiny size (GPU_CHECK_TINY=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_tiny(tmp_path):
    env = {
        **os.environ,
        "GPU_CHECK_TINY": "1",
        "OMP_NUM_THREADS": "1",
        "DLMBENCH": f"{sys.executable} -m harness",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run in ("gpu_check_t11_2048", "gpu_check_t11_8192", "gpu_check_t13"):
        assert (tmp_path / run / "cells").is_dir()
    table = pd.read_csv(tmp_path / "claims.csv")
    assert {"t11_mdlm_over_esolm_L8192", "b512_mdlm_over_esolm_T16"} <= set(table["claim_id"])
    assert (tmp_path / "claims.md").read_text().startswith("# GPU check")
