"""Peak memory of a long evaluation: held-out episodes are sampled and scored in chunks, so memory stays flat as
the number of episodes grows (issue 22: 2,000 Omniglot episodes took 1.63 GB when all were sampled up front).

    uv run python benchmarks/eval_memory.py --data-dir DIR [--episodes 10000] [--steps 1] [--json F]

Scores a shipped Omniglot initialization (default omniglot-5w5s, 5-way 5-shot, 10 query images per class) and
prints the process's peak resident memory (ru_maxrss) beside the number of episodes.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from reptile_fn import io
from reptile_fn import run as R

import mlx.core as mx


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--checkpoint", default="omniglot-5w5s")
    ap.add_argument("--episodes", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--query-size", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    run, params, state, _ = R.load(args.checkpoint, [f"tasks.data_dir={json.dumps(args.data_dir)}",
                                                     f"tasks.query_size={args.query_size}"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    curve = R.evaluate_init(run, params, mx.random.key(0), args.episodes, args.steps, state=state)
    out = {"checkpoint": args.checkpoint, "episodes": args.episodes, "steps": args.steps,
           "query_size": args.query_size, "seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_mb_before": round(before), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "accuracy_last_step": round(100 * curve["metric"]["mean"][-1], 2)}
    print(json.dumps(out))
    if args.json:
        io.write_json(args.json, out)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
