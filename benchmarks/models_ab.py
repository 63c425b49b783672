"""A config's compiled meta-step with ``reptile_fn/models.py`` as at a git revision against the working tree's.

    uv run python benchmarks/models_ab.py --config omniglot_20w1s --data-dir DIR [--old HEAD] [--blocks 8] [--steps 2]

Both versions are built and compiled in one process and their blocks alternate, so a machine that is busy with
something else slows both alike. The old version is the revision's ``models.py`` loaded as its own module; every
function it defines replaces the working tree's while the old meta-step is traced (the model's layers look them up
when traced). One meta-batch is sampled once and reused. Prints the largest parameter difference after one
meta-step from the same start (float32 rounding when the math is the same) and the median ms per meta-step.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import reptile_fn  # noqa: F401  (before mlx.core: loads OpenBLAS on Linux)
from reptile_fn import config as C
from reptile_fn import models
from reptile_fn.run.build import build, run_keys

import mlx.core as mx
from mlx.utils import tree_flatten

ROOT = Path(__file__).resolve().parents[1]


def old_models(rev: str):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:reptile_fn/models.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_models.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {k: v for k, v in vars(module).items() if callable(v) and getattr(v, "__module__", None) == "old_models"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="omniglot_20w1s")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--old", default="HEAD", help="the git revision whose models.py is the old version")
    ap.add_argument("--blocks", type=int, default=8, help="alternating timed blocks per version")
    ap.add_argument("--steps", type=int, default=2, help="meta-steps per block")
    args = ap.parse_args(argv)
    cfg = C.load(args.config, [f"tasks.data_dir={args.data_dir}"] if args.data_dir else [])
    run = build(cfg)
    params = run.initial_params(run_keys(cfg.seed).init)
    state = run.meta.init(params)
    batch = run.sample_train(mx.random.key(3), cfg.meta_batch_size)
    mx.eval(batch)
    new = {k: getattr(models, k) for k in old_models(args.old) if hasattr(models, k)}
    steps = {}
    for name, funcs in ((args.old, old_models(args.old)), ("working tree", new)):
        for k, f in funcs.items():
            if hasattr(models, k):
                setattr(models, k, f)
        step = mx.compile(lambda p, s, b, k: run.meta.step(p, s, b, k))
        out = step(params, state, batch, mx.random.key(9))  # traced (and compiled) here, with these functions
        mx.eval(out)
        steps[name] = (step, out[0])
    for k, f in new.items():
        setattr(models, k, f)
    (_, a), (_, b) = steps.values()
    diff = max(float(mx.abs(x - y).max()) for (_, x), (_, y) in zip(tree_flatten(a), tree_flatten(b)))
    print(f"{args.config}: largest parameter difference after one meta-step: {diff:.2g}")
    keys = mx.random.split(mx.random.key(1), args.blocks * args.steps)
    times = {k: [] for k in steps}
    for block in range(args.blocks):
        for name, (step, _) in steps.items():
            t = time.perf_counter()
            for i in range(args.steps):
                mx.eval(step(params, state, batch, keys[block * args.steps + i]))
            times[name].append((time.perf_counter() - t) / args.steps * 1e3)
    for name, t in times.items():
        print(f"{args.config}, models.py of {name}: {statistics.median(t):.0f} ms per meta-step "
              f"(median of {args.blocks} blocks of {args.steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
