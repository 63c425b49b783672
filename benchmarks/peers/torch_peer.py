"""PyTorch peer, two ways of writing the same Reptile meta-step:

- "torch.func+compile": functional_call + torch.func.grad for one task, torch.func.vmap over tasks, torch.compile
  around the meta-step (falls back to eager torch.func, and says so in the result's note, if compiling fails);
- "torch loop (learn2learn-style)": an nn.Module, a Python loop over tasks, a deep copy of the model per task adapted
  with an SGD optimizer, and the Reptile average applied by an outer SGD optimizer.

Run `python -m benchmarks.peers.torch_peer` for a table of W1 (M=8) and W2 (M=5) plus the correctness checks.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from . import common
from .common import WORKLOADS, inner_slices

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.func import functional_call, grad, vmap
except ImportError:  # the benchmark harness asks available() first
    torch = None

FUNC, LOOP = "torch.func+compile", "torch loop (learn2learn-style)"
VARIANTS = (FUNC, LOOP)


def available() -> bool:
    return torch is not None


# ---------------------------------------------------------------------------------------------- models, layouts, data

if torch is not None:

    class FlattenHWC(nn.Module):
        """Flatten in (h, w, c) order, the canonical one the head weight is laid out for (MLX and JAX are NHWC)."""

        def forward(self, x):
            return x.permute(0, 2, 3, 1).flatten(1)


def make_model(workload: str):
    if workload == "W1":
        a, b, c, d = common.MLP_SIZES
        return nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, d))
    layers, c_in = [], 1
    for _ in range(common.CONV_LAYERS):
        layers += [nn.Conv2d(c_in, common.FILTERS, 3, stride=2, padding=1), nn.ReLU()]
        c_in = common.FILTERS
    return nn.Sequential(*layers, FlattenHWC(), nn.Linear(4 * common.FILTERS, common.N_WAY))


def _layout(workload: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(torch name, canonical name, axes taking the canonical array to torch's layout) for every parameter."""
    if workload == "W1":
        return [x for i in range(3) for x in ((f"{2 * i}.weight", f"w{i}", (1, 0)), (f"{2 * i}.bias", f"b{i}", (0,)))]
    convs = [x for i in range(common.CONV_LAYERS)
             for x in ((f"{2 * i}.weight", f"c{i}", (3, 2, 0, 1)), (f"{2 * i}.bias", f"cb{i}", (0,)))]  # HWIO -> OIHW
    head = 2 * common.CONV_LAYERS + 1
    return convs + [(f"{head}.weight", "w", (1, 0)), (f"{head}.bias", "b", (0,))]


def to_torch(workload: str, params: dict[str, np.ndarray], dev) -> dict:
    # .copy() gives fresh C strides even on size-1 dims, so the inputs' strides match the compiled step's outputs
    # (otherwise torch.compile recompiles once, on a stride guard of the (40, 1) first-layer weight).
    return {t: torch.from_numpy(params[c].transpose(ax).copy()).to(dev) for t, c, ax in _layout(workload)}


def to_numpy(workload: str, params: dict) -> dict[str, np.ndarray]:
    return {c: params[t].detach().cpu().numpy().transpose(np.argsort(ax)) for t, c, ax in _layout(workload)}


def data_pool(workload: str, meta_batch: int, dev, seed: int = 0) -> list[tuple]:
    out = []
    for x, y in common.data_pool(workload, meta_batch, seed):
        if workload == "W2":
            x, y = x.transpose(0, 1, 4, 2, 3), y.astype(np.int64)  # NHWC -> NCHW; cross_entropy wants int64 labels
        out.append((torch.from_numpy(x.copy()).to(dev), torch.from_numpy(y).to(dev)))
    return out


def loss_fn(workload: str):
    return F.mse_loss if workload == "W1" else F.cross_entropy


# ---------------------------------------------------------------------------------------------- the meta-steps


def make_func_meta_step(workload: str, model):
    """torch.func: grad of a functional task loss, the inner loop per task, vmap over tasks; params is a dict."""
    w, loss = WORKLOADS[workload], loss_fn(workload)

    def task_loss(params, x, y):
        return loss(functional_call(model, params, (x,)), y)

    def adapt(params, x, y):
        for sl in inner_slices(w, x.shape[0]):  # unrolled: 5 static steps, static slices
            g = grad(task_loss)(params, x[sl], y[sl])
            params = {k: p - w.inner_lr * g[k] for k, p in params.items()}
        return params

    def meta_step(params, xs, ys):
        adapted = vmap(adapt, in_dims=(None, 0, 0))(params, xs, ys)
        return {k: p + w.outer_lr * (adapted[k].mean(0) - p) for k, p in params.items()}

    return meta_step


def make_loop_meta_step(workload: str, model):
    """The way learn2learn users write Reptile: mutates `model` in place; deep copy + SGD per task."""
    w, loss = WORKLOADS[workload], loss_fn(workload)
    # Reptile's outer step as learn2learn's examples do it: SGD(lr=beta) on the "gradient" theta - mean_i theta_i,
    # i.e. theta <- theta + beta * (mean_i theta_i - theta).
    outer_opt = torch.optim.SGD(model.parameters(), lr=w.outer_lr)

    def meta_step(xs, ys):
        sums = [torch.zeros_like(p) for p in model.parameters()]
        for x, y in zip(xs, ys):
            learner = copy.deepcopy(model)
            opt = torch.optim.SGD(learner.parameters(), lr=w.inner_lr)
            for sl in inner_slices(w, x.shape[0]):
                opt.zero_grad()
                loss(learner(x[sl]), y[sl]).backward()
                opt.step()
            with torch.no_grad():
                for s, p in zip(sums, learner.parameters()):
                    s.add_(p)
        for p, s in zip(model.parameters(), sums):
            p.grad = p.detach() - s / len(xs)
        outer_opt.step()
        outer_opt.zero_grad()

    return meta_step


def reference_meta_step(workload: str, model):
    """Plain reference: loops over tasks and steps, torch.autograd.grad, no vmap, compile or optimizer."""
    w, loss = WORKLOADS[workload], loss_fn(workload)

    def meta_step(params, xs, ys):
        mean = {k: torch.zeros_like(p) for k, p in params.items()}
        for x, y in zip(xs, ys):
            fast = dict(params)
            for sl in inner_slices(w, x.shape[0]):
                fast = {k: p.detach().requires_grad_() for k, p in fast.items()}
                g = torch.autograd.grad(loss(functional_call(model, fast, (x[sl],)), y[sl]), list(fast.values()))
                fast = {k: p.detach() - w.inner_lr * gk for (k, p), gk in zip(fast.items(), g)}
            for k in mean:
                mean[k] += fast[k] / len(xs)
        return {k: p + w.outer_lr * (mean[k] - p) for k, p in params.items()}

    return meta_step


# ---------------------------------------------------------------------------------------------- harness interface


def _device(device: str):
    if device == "cpu":
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else None


def _setup(dev, num_threads: int | None) -> str:
    if dev.type == "cpu":
        n = num_threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        torch.set_num_threads(n)
        return f"threads={n}"
    # Full float32 everywhere, as in the other peers: no TF32 in cuDNN convs or cuBLAS matmuls.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return "no TF32"


COMPILE_MODES = ("fullgraph", "graph breaks allowed", "eager")  # what FUNC tries, in order, until one works


def _builder(variant: str, workload: str, dev, seed: int = 0, mode: str = COMPILE_MODES[0]):
    """Returns (step(xs, ys), params()): one meta-step on the variant's own state, and that state as a dict."""
    model = make_model(workload).to(dev)
    start = to_torch(workload, common.init_params(workload, seed), dev)
    if variant == LOOP:
        model.load_state_dict(start)
        return make_loop_meta_step(workload, model), lambda: dict(model.named_parameters())
    if variant == FUNC:
        fn = make_func_meta_step(workload, model)
        if mode != "eager":
            torch._dynamo.reset()  # fresh compile per run: no stale guards, no recompile limit, no dynamic shapes
            fn = torch.compile(fn, fullgraph=mode == "fullgraph")
    else:  # the reference
        fn = reference_meta_step(workload, model)
    state = {"params": start}

    def step(xs, ys):
        state["params"] = fn(state["params"], xs, ys)

    return step, lambda: state["params"]


def _final_params(variant: str, workload: str, meta_batch: int, steps: int) -> dict:
    dev = torch.device("cpu")
    step, params = _builder(variant, workload, dev)
    pool = data_pool(workload, meta_batch, dev)
    for t in range(steps):
        step(*pool[t % len(pool)])
    return to_numpy(workload, params())


def reference(workload: str, meta_batch_size: int | None = None, steps: int = 3) -> dict:
    """Parameters (canonical numpy layout) after `steps` meta-steps of the plain reference, on CPU."""
    return _final_params("reference", workload, meta_batch_size or common.DEFAULT_META_BATCH[workload], steps)


def check(workload: str, variant: str, meta_batch_size: int | None = None, steps: int = 3) -> float:
    """Max |difference| between the parameters after `steps` meta-steps of `variant` and of the plain reference."""
    assert variant in VARIANTS, variant
    m = meta_batch_size or common.DEFAULT_META_BATCH[workload]
    return common.max_abs_diff(_final_params(variant, workload, m, steps), reference(workload, m, steps))


def _time(variant, workload, meta_batch, dev, seed, mode, **timing) -> list[float]:
    step_fn, _ = _builder(variant, workload, dev, seed, mode)
    pool = data_pool(workload, meta_batch, dev, seed)
    counter = [0]

    def step():
        step_fn(*pool[counter[0] % len(pool)])
        counter[0] += 1

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
        # On CPU eager and inductor-compiled code both return only when the results are computed.

    return common.time_meta_steps(step, sync, **timing)


def run(workload: str, meta_batch_size: int, *, device: str = "cpu", repeats: int = 5, min_block_s: float = 0.2,
        warmup: int = 3, variants=None, seed: int = 0, num_threads: int | None = None) -> list[dict]:
    if not available() or (dev := _device(device)) is None:
        return []
    setup_note = _setup(dev, num_threads)
    timing = dict(repeats=repeats, min_block_s=min_block_s, warmup=warmup)
    rows = []
    for variant in variants or VARIANTS:
        if variant not in VARIANTS:
            continue
        notes = [setup_note]
        for mode in COMPILE_MODES if variant == FUNC else ("eager",):
            try:
                with torch.enable_grad():  # the loop's backward() needs grad mode, whatever the caller's
                    samples = _time(variant, workload, meta_batch_size, dev, seed, mode, **timing)
                break
            except Exception as e:
                if mode == "eager":
                    raise
                notes.append(f"torch.compile ({mode}) failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:100]}")
        if variant == FUNC and mode != "fullgraph":
            notes.append(f"timed: {mode}")
        note = "; ".join(notes)
        rows.append(common.result("torch", torch.__version__, variant, workload, meta_batch_size, device, samples, note))
    return rows


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-block-s", type=float, default=0.2)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    rows, checks = [], {}
    for wl, m in common.DEFAULT_META_BATCH.items():
        rows += run(wl, m, device=args.device, repeats=args.repeats, min_block_s=args.min_block_s)
        for v in VARIANTS:
            checks[(v, wl)] = check(wl, v)
    common.print_table(rows, checks)
    common.print_cross_check()


if __name__ == "__main__":
    main()
