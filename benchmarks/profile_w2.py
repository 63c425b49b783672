"""Where W2's inner step spends its time: each primitive class of conv4's forward and backward, timed alone.

    uv run python benchmarks/profile_w2.py [--repeats 7] [--json research/perf/profile_w2.json]

W2's shapes (benchmarks/throughput.py): 5 tasks, each with its own conv4 (64 filters, stride 2, no norm),
one inner step on 10 images of 28×28×1. Every piece below is vmapped over the 5 tasks and compiled, as in
the meta-step, and runs over all four layers at once; each figure is the median over ``--repeats`` blocks
of ≥ 0.2 s. The pieces are those of ``models._im2col_conv`` (forward: pad + 9 strided slices +
concatenate, one GEMM; backward: the weight GEMM, the column GEMM, col2im by stride phases) plus the
rest of the step (ReLU and its mask, the head, the loss, the SGD update). ``sum of pieces`` against
``inner step`` says how much the fused step saves or loses over the pieces; ``GEMM share`` is the part
of the step that is matrix products (what a perfect implementation could not avoid).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import reptile_fn  # before mlx.core: loads OpenBLAS on Linux
from reptile_fn import io, models
from reptile_fn.losses import cross_entropy

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: makes `benchmarks.peers` importable
from benchmarks.peers.common import time_meta_steps  # noqa: E402

M, B, F, STRIDE = 5, 10, 64, 2
SIZES = [(28, 1), (14, F), (7, F), (4, F)]  # (input side, input channels) of each layer


def timed(fn, args, repeats: int, min_block: float = 0.2, sync=mx.eval) -> float:
    """Median ms per call of ``fn(*args)``, each call materialised by ``sync``, with the peers' timing protocol
    (``peers.common.time_meta_steps``: warm-up untimed, ``repeats`` blocks of ≥ ``min_block`` s)."""
    rates = time_meta_steps(lambda: sync(fn(*args)), lambda: None, repeats=repeats, min_block_s=min_block, warmup=2)
    return 1e3 / statistics.median(rates)


def vc(f):
    return mx.compile(mx.vmap(f))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    mx.set_default_device(mx.cpu)
    rng = np.random.default_rng(0)
    arr = lambda *s: mx.array(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    model = models.conv4((28, 28, 1), 5, filters=F)
    params = model.init(mx.random.key(0))
    tparams = {k: {n: mx.stack([v] * M) for n, v in d.items()} for k, d in params.items()}  # one per task
    x = mx.array(rng.uniform(size=(M, B, 28, 28, 1)).astype(np.float32))
    y = mx.array(rng.integers(0, 5, size=(M, B)).astype(np.int32))

    # per-layer operands, with a task axis: inputs, columns, weights (9c, o), output gradients
    xs, cols, ws, gs, outs = [], [], [], [], []
    for side, c in SIZES:
        ho = (side - 1) // STRIDE + 1
        xs.append(arr(M, B, side, side, c))
        cols.append(arr(M, B * ho * ho, 9 * c))
        ws.append(arr(M, 9 * c, F))
        gs.append(arr(M, B * ho * ho, F))
        outs.append(arr(M, B, ho, ho, F))

    def im2col(*xs_):
        out = []
        for xi in xs_:
            side = xi.shape[1]
            ho = (side - 1) // STRIDE + 1
            out.append(models._cols(xi, STRIDE, ho, ho))
        return out

    def col2im(*gs_):  # the written-out input gradient, as models._im2col_conv's vjp, from dcols
        out = []
        for (side, c), g in zip(SIZES, gs_):
            conv = models._im2col_conv(STRIDE)
            xi = mx.zeros((B, side, side, c))
            wi = mx.zeros((F, 3, 3, c))
            _, vjp = mx.vjp(lambda a: conv(a, wi, mx.zeros((F,))), [xi], [g])
            out.append(vjp[0])
        return out

    pieces = {
        "im2col (pad, 9 strided slices, concatenate)": (vc(im2col), xs),
        "forward GEMMs (cols @ W)": (vc(lambda *a: [c @ w for c, w in zip(a[:4], a[4:])]), cols + ws),
        "weight-gradient GEMMs (colsᵀ @ G)": (vc(lambda *a: [c.T @ g for c, g in zip(a[:4], a[4:])]), cols + gs),
        "column-gradient GEMMs (G @ Wᵀ)": (vc(lambda *a: [g @ w.T for g, w in zip(a[:4], a[4:])]), gs + ws),
        "col2im by stride phases (input gradient, with its column GEMM)": (vc(col2im), outs),
        "ReLU forward and backward": (vc(lambda *a: [mx.maximum(o, 0) * (o > 0) for o in a]), outs),
    }
    grad = mx.grad(lambda p, xi, yi: cross_entropy(model.apply(p, xi), yi))
    step = lambda p, xi, yi: tree_map(lambda a, g: a - 1e-3 * g, p, grad(p, xi, yi))  # noqa: E731
    whole = {
        "forward (loss)": (vc(lambda p, xi, yi: cross_entropy(model.apply(p, xi), yi)), (tparams, x, y)),
        "forward + backward": (vc(grad), (tparams, x, y)),
        "inner step (forward, backward, SGD update)": (vc(step), (tparams, x, y)),
    }
    res = {"shapes": f"{M} tasks × {B} images 28×28×1, conv4 {F} filters stride {STRIDE}, no norm",
           "blas": reptile_fn.blas_status(), "mlx": mx.__version__, "date": time.strftime("%Y-%m-%d"),
           "pieces_ms": {}, "whole_ms": {}}
    for name, (fn, a) in pieces.items():
        res["pieces_ms"][name] = round(timed(fn, a, args.repeats), 3)
        print(f"{res['pieces_ms'][name]:8.2f} ms  {name}", flush=True)
    for name, (fn, a) in whole.items():
        res["whole_ms"][name] = round(timed(fn, a, args.repeats), 3)
        print(f"{res['whole_ms'][name]:8.2f} ms  {name}", flush=True)
    try:  # the same GEMMs in PyTorch, if installed: is MLX's batched matmul itself the limit?
        import torch
        torch.set_num_threads(__import__("os").cpu_count() or 1)
        tc = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
        tcols, tws, tgs = [tc(c) for c in cols], [tc(w) for w in ws], [tc(g) for g in gs]

        def torch_gemms():
            with torch.no_grad():
                return ([torch.bmm(c, w) for c, w in zip(tcols, tws)] + [torch.bmm(c.transpose(1, 2), g) for c, g in
                        zip(tcols, tgs)] + [torch.bmm(g, w.transpose(1, 2)) for g, w in zip(tgs, tws)])

        res["torch_gemm_ms"] = round(timed(torch_gemms, (), args.repeats, sync=lambda _: None), 3)
        res["torch"] = torch.__version__
        print(f"{res['torch_gemm_ms']:8.2f} ms  the same 12 GEMMs in PyTorch {torch.__version__} (torch.bmm)")
    except ImportError:
        pass
    gemm = sum(v for k, v in res["pieces_ms"].items() if "GEMMs" in k)
    stepms = res["whole_ms"]["inner step (forward, backward, SGD update)"]
    res["gemm_ms"], res["gemm_share"] = round(gemm, 3), round(gemm / stepms, 3)
    print(f"GEMMs {gemm:.2f} ms = {100 * gemm / stepms:.0f}% of the inner step ({stepms:.2f} ms)")
    if args.json:
        io.write_text(args.json, __import__("json").dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
