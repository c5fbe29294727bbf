"""Print the validation table of the shipped checkpoints (markdown), from their config.json files.

/work/main/.venv/bin/python scripts/checkpoint_table.py [checkpoints]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ("ar", "bd3lm-b4", "bd3lm-b16", "mdlm", "esolm", "evaluator-ar")


def main(argv: list[str] | None = None) -> int:
    """Print one markdown row per checkpoint directory that has training metrics."""
    root = Path((argv or sys.argv[1:] or ["checkpoints"])[0])
    dirs = [root / n for n in ORDER if (root / n / "config.json").is_file()]
    cols = ("Checkpoint", "Family", "L′", "Steps", "Val NLL (nats/token)", "± s.e.", "Val PPL")
    print("| " + " | ".join(cols + ("Params", "Train wall")) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in dirs:
        doc = json.loads((d / "config.json").read_text())
        m, net = doc.get("metrics") or {}, doc["model"]
        fv = m.get("final_validation") or {}
        bound = "" if net["family"] == "ar" else "≤ "
        print(
            f"| `{d.name}` | {net['family']} | {net.get('block_size') or '–'} | {m.get('steps')} "
            f"| {bound}{m['val_nll']:.3f} | {fv.get('nll_se', float('nan')):.3f} "
            f"| {bound}{m['val_ppl']:.1f} | {m.get('parameters', 0) / 1e6:.2f}M "
            f"| {m.get('train_wall_s', 0) / 60:.1f} min |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
