"""Which BLAS MLX's CPU path runs on, and what it costs: the system OpenBLAS, the wheel's, the reference BLAS.

    uv run python benchmarks/blas.py [--repeats 5] [--json research/perf/blas.json]

The Linux ``mlx[cpu]`` wheel bundles the reference BLAS; ``reptile_fn`` loads the system OpenBLAS
(``REPTILE_FN_BLAS=system``) or, on a machine without one, the ``scipy-openblas32`` wheel's
(``REPTILE_FN_BLAS=wheel``, a dependency of the package) before MLX; ``REPTILE_FN_NO_OPENBLAS=1`` keeps the
reference BLAS; ``OPENBLAS_CORETYPE=Prescott`` is what an OpenBLAS that does not know the CPU's model runs. Each setting runs in fresh processes, one BLAS thread (``OPENBLAS_NUM_THREADS=1``), the settings
alternating; figures are medians over ``--repeats`` processes:

- float32 matmul 512³ and 1024×576×64 (an im2col conv4 GEMM), GFLOP/s;
- one conv4 inner step (forward + gradient, 5 tasks × 10 images, vmapped and compiled; W2's), ms;
- ``reptile-fn train`` on the built-in default (the README's quick start, its final evaluation included), s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from reptile_fn import io

SETTINGS = {"system OpenBLAS": {"REPTILE_FN_BLAS": "system"}, "wheel OpenBLAS (scipy-openblas32)": {"REPTILE_FN_BLAS": "wheel"},
            # what an OpenBLAS older than the CPU falls back to, unless reptile_fn names the kernels (reptile_fn/_blas.py)
            "system OpenBLAS, generic kernels": {"REPTILE_FN_BLAS": "system", "OPENBLAS_CORETYPE": "Prescott"},
            "reference BLAS": {"REPTILE_FN_NO_OPENBLAS": "1"}}

PROBE = r"""
import json, time
import reptile_fn
from reptile_fn import models
from reptile_fn.losses import cross_entropy
import mlx.core as mx

def best(f, n):
    f(); out = []
    for _ in range(n):
        t = time.perf_counter(); f(); out.append(time.perf_counter() - t)
    return min(out)

res = {"blas": reptile_fn.blas_status()}
for name, (m, k, n) in {"matmul_512": (512, 512, 512), "matmul_conv": (1024, 576, 64)}.items():
    a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
    res[name + "_gflops"] = 2 * m * k * n / best(lambda: mx.eval(a @ b), 20) / 1e9
model = models.conv4((28, 28, 1), 5, norm="batch")
params = model.init(mx.random.key(1))
xs, ys = mx.random.uniform(shape=(5, 10, 28, 28, 1)), mx.random.randint(0, 5, (5, 10))
grad = mx.compile(mx.vmap(mx.grad(lambda p, x, y: cross_entropy(model.apply(p, x), y)), in_axes=(None, 0, 0)))
res["conv4_step_ms"] = 1000 * best(lambda: mx.eval(grad(params, xs, ys)), 20)
print(json.dumps(res))
"""


def one(env: dict, parent: str) -> dict:
    full = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **env}
    probe = json.loads(subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1])
    out_dir = tempfile.mkdtemp(dir=parent)  # a new run folder each time
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from reptile_fn.cli import main; main()", "train", "--out", out_dir],
                          env=full, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"reptile-fn train failed ({env}): {done.stderr.strip()}")
    probe["quick_start_s"] = time.perf_counter() - t
    return probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out", default="/tmp/reptile_fn_blas_bench")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    runs = {name: [] for name in SETTINGS}
    for i in range(args.repeats):
        for name, env in SETTINGS.items():
            runs[name].append(one(env, args.out))
            print(name, runs[name][-1], flush=True)
    keys = ("matmul_512_gflops", "matmul_conv_gflops", "conv4_step_ms", "quick_start_s")
    result = {"settings": {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in keys} | {"blas": rs[0]["blas"]}
                           for name, rs in runs.items()},
              "runs": runs, "repeats": args.repeats, "threads": 1, "date": time.strftime("%Y-%m-%d"),
              "command": "uv run python benchmarks/blas.py " + " ".join(sys.argv[1:])}
    for name, r in result["settings"].items():
        print(f"{name:36s} {r['matmul_512_gflops']:7.1f} GFLOP/s (512³)  {r['matmul_conv_gflops']:7.1f} GFLOP/s (conv GEMM)  "
              f"conv4 step {r['conv4_step_ms']:7.2f} ms  quick start {r['quick_start_s']:6.1f} s")
    if args.json:
        io.write_json(args.json, result)


if __name__ == "__main__":
    main()
