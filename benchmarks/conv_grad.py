"""conv4's inner step with autograd's im2col gradient vs the written-out ones (``models._im2col_conv``).

    uv run python benchmarks/conv_grad.py [--repeats 5] [--tasks 5,32] [--images 10] [--json research/perf/conv_grad.json]

One inner step (forward and gradient) of 5 tasks × ``--images`` images (10: W2 and the 5-way config's inner batch;
20: the 20-way config's), 28×28×1, vmapped over tasks and compiled, as in the W2 workload of
benchmarks/throughput.py, with batch norm as configs/omniglot_5w1s.yaml. Variants, alternating:

- ``autograd``: the im2col forward differentiated by autograd (9 strided-slice VJPs scattered into zeros);
- ``scatter``: the first written-out gradient (2026-11-29): the column gradient ``g @ Wᵀ`` padded tap by tap into
  its stride phase and the phases interleaved;
- ``written_out``: the library's (2026-12-01): each stride phase of the input gradient as its own GEMM over
  unit-stride slices of the output gradient;
- ``written_out_var_bn``: the library's conv with the batch norm as it was before 2026-12-01 (``mx.var``, which
  recomputes the centring that the output needs again);
- ``scatter_var_bn``: both as they were before 2026-12-01 (the library from 2026-11-29 to then).

Each figure is the median over ``--repeats`` blocks of 20 steps. ``--tasks`` times other meta-batch sizes too (W2 at
meta-batch 32 on a GPU: benchmarks/gpu/session.sh's CONVGRAD=1); MLX's default device runs it (a GPU when there is one).
"""

from __future__ import annotations

import argparse
import functools
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


@functools.lru_cache(maxsize=None)
def scatter_conv(stride: int):
    """The im2col convolution with the first written-out gradient: the column gradient scattered by stride phases."""

    @mx.custom_function
    def conv(x, w, b):
        return autograd_conv(x, w, b, stride=stride)

    @conv.vjp
    def conv_vjp(primals, cotangent, output):
        x, w, b = primals
        n, h, wd, c = x.shape
        ho, wo, o = cotangent.shape[1:]
        g = cotangent.reshape(n * ho * wo, o)
        dw = models._weight_gradient(x, cotangent, stride)  # as the library's; only the input gradient differs
        dcols = (g @ mx.transpose(w, (1, 2, 3, 0)).reshape(9 * c, o).T).reshape(n, ho, wo, 3, 3, c)
        hp, wp = -(-(h + 2) // stride), -(-(wd + 2) // stride)
        phases: dict = {}
        for i in range(3):
            for j in range(3):
                oi, oj = i // stride, j // stride
                piece = mx.pad(dcols[:, :, :, i, j, :], [(0, 0), (oi, hp - ho - oi), (oj, wp - wo - oj), (0, 0)])
                key = (i % stride, j % stride)
                phases[key] = piece if key not in phases else phases[key] + piece
        rows = [mx.stack([phases[(p, q)] for q in range(stride)], axis=3) for p in range(stride)]
        dxp = mx.stack(rows, axis=2).reshape(n, hp * stride, wp * stride, c)
        return dxp[:, 1:h + 1, 1:wd + 1, :], dw, g.sum(axis=0)

    return conv


def var_batch_norm(x, scale, offset, eps: float = 1e-5):
    """The batch norm before 2026-12-01: ``mx.var`` centres the batch again for the variance."""
    mean = mx.mean(x, axis=(0, 1, 2), keepdims=True)
    var = mx.var(x, axis=(0, 1, 2), keepdims=True)
    return (x - mean) * mx.rsqrt(var + eps) * scale + offset


VARIANTS = {  # name: (conv3x3, batch_norm)
    "autograd": (autograd_conv, models.batch_norm),
    "scatter": (lambda x, w, b, *, stride=1, impl="im2col": scatter_conv(stride)(x, w, b), models.batch_norm),
    "written_out": (models.conv3x3, models.batch_norm),
    "written_out_var_bn": (models.conv3x3, var_batch_norm),
    "scatter_var_bn": (lambda x, w, b, *, stride=1, impl="im2col": scatter_conv(stride)(x, w, b), var_batch_norm),
}


def step_ms(variant, xs, ys, repeats: int) -> list[float]:
    original = models.conv3x3, models.batch_norm
    models.conv3x3, models.batch_norm = variant
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
        models.conv3x3, models.batch_norm = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tasks", default="5", help="comma-separated meta-batch sizes (first: the top-level figures)")
    ap.add_argument("--images", type=int, default=10, help="images per task (the inner batch)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    result = {}
    for i, n in enumerate(int(t) for t in args.tasks.split(",")):
        xs, ys = mx.random.uniform(shape=(n, args.images, 28, 28, 1)), mx.random.randint(0, 5, (n, args.images))
        times = {name: [] for name in VARIANTS}
        for _ in range(args.repeats):
            for name, variant in VARIANTS.items():
                times[name] += step_ms(variant, xs, ys, 1)
        one = {name: round(statistics.median(t), 2) for name, t in times.items()}
        one["runs_ms"] = {k: [round(v, 2) for v in t] for k, t in times.items()}
        print(f"conv4 inner step ({n} tasks x {args.images} images, {mx.default_device()}): "
              + ", ".join(f"{k} {one[k]} ms" for k in VARIANTS)
              + f" (autograd / written_out {one['autograd'] / one['written_out']:.2f}x)")
        if i == 0:
            result.update(one)
        else:
            result.setdefault("tasks", {})[str(n)] = one
    result.update(images=args.images, blas=reptile_fn.blas_status(), device=str(mx.default_device()), mlx=mx.__version__,
                  date=time.strftime("%Y-%m-%d"))
    if args.json:
        io.write_json(args.json, result)


if __name__ == "__main__":
    main()
