"""conv4's inner step with autograd's im2col gradient vs the written-out one (``models._im2col_conv``).

    uv run python benchmarks/conv_grad.py [--repeats 5] [--tasks 5,32] [--json research/perf/conv_grad.json]

One inner step (forward and gradient) of 5 tasks × 10 images, 28×28×1, vmapped over tasks and compiled, as in the
W2 workload of benchmarks/throughput.py, with batch norm as configs/omniglot_5w1s.yaml. The two variants alternate;
each figure is the median over ``--repeats`` blocks of 20 steps. ``--tasks`` times other meta-batch sizes too (W2 at
meta-batch 32 on a GPU: benchmarks/gpu/session.sh's CONVGRAD=1); MLX's default device runs it (a GPU when there is one).
"""

from __future__ import annotations

import argparse
import statistics
import time

import reptile_fn
from reptile_fn import io, models
from reptile_fn.losses import cross_entropy

import mlx.core as mx


def autograd_conv(x, w, b, *, stride=1, impl="im2col"):
    """The im2col convolution differentiated by autograd (the library's conv before its written-out gradient)."""
    n, h, wd, c = x.shape
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    out = models._cols(x, stride, ho, wo).reshape(n * ho * wo, 9 * c) @ mx.transpose(w, (1, 2, 3, 0)).reshape(9 * c, -1)
    return out.reshape(n, ho, wo, -1) + b


def step_ms(conv, xs, ys, repeats: int) -> list[float]:
    original = models.conv3x3
    models.conv3x3 = conv
    try:
        model = models.conv4((28, 28, 1), 5, norm="batch")
        params = model.init(mx.random.key(1))
        grad = mx.compile(mx.vmap(mx.grad(lambda p, x, y: cross_entropy(model.apply(p, x), y)), in_axes=(None, 0, 0)))
        mx.eval(grad(params, xs, ys))
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(20):
                mx.eval(grad(params, xs, ys))
            out.append((time.perf_counter() - t) / 20 * 1000)
        return out
    finally:
        models.conv3x3 = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tasks", default="5", help="comma-separated meta-batch sizes (first: the top-level figures)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    result = {}
    for i, n in enumerate(int(t) for t in args.tasks.split(",")):
        xs, ys = mx.random.uniform(shape=(n, 10, 28, 28, 1)), mx.random.randint(0, 5, (n, 10))
        times = {"autograd": [], "written_out": []}
        for _ in range(args.repeats):
            times["autograd"] += step_ms(autograd_conv, xs, ys, 1)
            times["written_out"] += step_ms(models.conv3x3, xs, ys, 1)
        one = {name: round(statistics.median(t), 2) for name, t in times.items()}
        one["runs_ms"] = {k: [round(v, 2) for v in t] for k, t in times.items()}
        print(f"conv4 inner step ({n} tasks x 10 images, {mx.default_device()}): autograd {one['autograd']} ms, "
              f"written-out gradient {one['written_out']} ms ({one['autograd'] / one['written_out']:.2f}x)")
        if i == 0:
            result.update(one)
        else:
            result.setdefault("tasks", {})[str(n)] = one
    result.update(blas=reptile_fn.blas_status(), device=str(mx.default_device()), mlx=mx.__version__,
                  date=time.strftime("%Y-%m-%d"))
    if args.json:
        io.write_json(args.json, result)


if __name__ == "__main__":
    main()
