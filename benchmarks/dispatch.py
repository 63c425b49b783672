"""W1's limit: the fixed cost of one MLX operation on the CPU, against XLA's (JAX) on the same chain.

    uv run python benchmarks/dispatch.py [--ops 1000] [--json research/perf/dispatch.json]

A chain of ``--ops`` dependent tiny matrix products (a 1×40 row through 40×40 matrices, W1's hidden
width) cannot be fused into one loop, so each product is one primitive: MLX runs it as one operation
(compiled or not), XLA as one call into its own kernel inside one compiled program. The figure is µs per
operation, median of 7 blocks. W1's meta-step is a few hundred such primitives (5 inner steps of
forward, backward and update of a 3-layer MLP for each task, vmapped, plus the outer update), so this cost
times that count bounds its meta-steps/s whatever the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import reptile_fn  # before mlx.core: loads OpenBLAS on Linux
from reptile_fn import io

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: makes `benchmarks` importable
from benchmarks.profile_w2 import timed  # noqa: E402


def per_op_us(fn, arg, ops: int, sync) -> float:
    """Median µs per operation of ``fn(arg)``, a chain of ``ops`` operations materialised by ``sync``."""
    return timed(fn, (arg,), 7, sync=sync) * 1e3 / ops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    mx.set_default_device(mx.cpu)
    w = np.random.default_rng(0).standard_normal((40, 40)).astype(np.float32) / 8
    x0 = np.ones((1, 40), np.float32)
    wm = mx.array(w)

    def chain(x):
        for _ in range(args.ops):
            x = x @ wm
        return x

    res = {"ops": args.ops, "mlx": mx.__version__, "blas": reptile_fn.blas_status(), "date": time.strftime("%Y-%m-%d"),
           "us_per_op": {}}
    res["us_per_op"]["mlx eager"] = per_op_us(chain, mx.array(x0), args.ops, mx.eval)
    res["us_per_op"]["mlx compiled"] = per_op_us(mx.compile(chain), mx.array(x0), args.ops, mx.eval)
    try:
        import jax
        import jax.numpy as jnp

        wj = jnp.asarray(w)

        def jchain(x):
            for _ in range(args.ops):
                x = x @ wj
            return x

        res["us_per_op"]["jax jit"] = per_op_us(jax.jit(jchain), jnp.asarray(x0), args.ops,
                                                lambda a: a.block_until_ready())
        res["jax"] = jax.__version__
    except ImportError:
        pass
    for k, v in res["us_per_op"].items():
        print(f"{v:8.2f} µs per operation  {k} ({args.ops} dependent 1×40 @ 40×40 products)")
    if args.json:
        io.write_text(args.json, json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
