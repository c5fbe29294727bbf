"""The ``dlmbench`` command line."""
# ruff: noqa: B023, E731  (placeholder demo; replaced by the runner-based demo)

from __future__ import annotations

import argparse
import sys
import time

import torch

from harness.network import DiT, DiTConfig, deterministic_init


def _time(fn, repeats: int = 5) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def cmd_demo(args: argparse.Namespace) -> int:
    """Time each network call path on a random-weight cpu-s model (placeholder demo)."""
    L = args.seq_len
    rows = []
    for family in ("mdlm", "bd3lm", "esolm", "ar"):
        cfg = DiTConfig.from_size("cpu-s", family=family, vocab_size=8193, model_length=L)
        model = deterministic_init(DiT(cfg)).eval().freeze_conditioning()
        x = torch.randint(0, 8192, (1, L))
        with torch.inference_mode():
            if family == "mdlm":
                rows.append(("mdlm full forward", L, _time(lambda: model(x))))
            elif family == "ar":
                cache = model.new_kv_cache(1, L)
                model.forward_cached(x[:, : L - 1], cache, start=0, causal=True)
                step = lambda: model.forward_cached(x[:, -1:], cache, start=L - 1, causal=True)  # noqa: E731
                rows.append(("ar cached step (last)", 1, _time(step)))
            elif family == "esolm":
                cache = model.new_kv_cache(1, L)
                model.forward_cached(x[:, : L - 2], cache, start=0, causal=True)
                step = lambda: model.forward_cached(
                    x[:, -2:], cache, start=L - 2, causal=True, logits=1
                )  # noqa: E731,E501
                rows.append(("esolm cached step k_prev=1,k=1", 2, _time(step)))
            else:
                cache = model.new_kv_cache(1, L)
                model.forward_cached(x[:, : L - 16], cache, start=0, causal=False)
                step = lambda: model.forward_cached(x[:, -16:], cache, start=L - 16, causal=False)  # noqa: E731,E501
                rows.append(("bd3lm efficient block step B=16", 16, _time(step)))
    print(f"{'call path':34s} {'fed':>5s} {'ms/call':>9s}")
    for name, fed, t in rows:
        print(f"{name:34s} {fed:5d} {t * 1e3:9.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dlmbench`` console script."""
    parser = argparse.ArgumentParser(prog="dlmbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="time the network call paths on a random-weight model")
    p.add_argument("--seq-len", type=int, default=256)
    p.set_defaults(fn=cmd_demo)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
