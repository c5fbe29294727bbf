#!/usr/bin/env bash
# The prepared GPU check (issue: reproduce the claims): paper-size Eso-LMs Table 11 (L = 2048 all
# samplers; L = 8192 for the 65× and 3.8× headlines) and a short Table 13/14 slice on one GPU,
# then the claims report. Results folders and claims.{md,csv} land in OUT_DIR.
#
#   scripts/gpu_check.sh OUT_DIR                    # on a GPU machine, ~8 minutes (estimated)
#   GPU_CHECK_TINY=1 scripts/gpu_check.sh OUT_DIR   # the same pipeline on CPU at a tiny size
set -euo pipefail
OUT="${1:?usage: scripts/gpu_check.sh OUT_DIR}"
cd "$(dirname "$0")/.."
DLM="${DLMBENCH:-python -m harness}"
mkdir -p "$OUT"
TINY=()
if [ -n "${GPU_CHECK_TINY:-}" ]; then
  # Same configs, shrunk to a tiny random model on the CPU (tests run this).
  TINY=(device=cpu dtype=float32 checkpoints.small.path=random:tiny checkpoints.small.vocab_size=64
        timing.repeats=2 timing.warmup=0)
fi
run() {  # run CONFIG [overrides...]
  local cfg="$1"; shift
  $DLM run "$cfg" output_dir="$OUT" "${TINY[@]}" "$@" --run-id "$(basename "$cfg" .yaml)"
}
$DLM validate configs/paper/gpu_check_t11_2048.yaml "${TINY[@]}" >/dev/null
if [ -n "${GPU_CHECK_TINY:-}" ]; then
  run configs/paper/gpu_check_t11_2048.yaml 'seq_lens=[16]'
  run configs/paper/gpu_check_t11_8192.yaml 'seq_lens=[32]'
  run configs/paper/gpu_check_t13.yaml 'seq_lens=[16]' 'batch_sizes=[4]'
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv > "$OUT/gpu.csv" || true
  run configs/paper/gpu_check_t11_2048.yaml
  run configs/paper/gpu_check_t11_8192.yaml
  run configs/paper/gpu_check_t13.yaml
fi
# One claims report over the three runs (the report maps paper L/batch to the run's by role).
python - "$OUT" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from harness.report.claims import claims_table, to_markdown

out = Path(sys.argv[1])
tables = []
for name in ("gpu_check_t11_2048", "gpu_check_t11_8192", "gpu_check_t13"):
    t = claims_table(out / name)
    t.insert(0, "run", name)
    measured = t["status"].eq("ok") | t["status"].str.startswith("noisy")  # noisy: no verdict
    tables.append(t[measured])
table = pd.concat(tables, ignore_index=True)
table.to_csv(out / "claims.csv", index=False)
(out / "claims.md").write_text("# GPU check: claims\n\n" + to_markdown(table))
print((out / "claims.md").read_text())
PY
