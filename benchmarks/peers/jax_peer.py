"""JAX peer: the Reptile meta-step as pure JAX: params a pytree, jax.grad inside, jax.vmap over tasks, jax.jit around it all.

Run `python -m benchmarks.peers.jax_peer` for a table of W1 (M=8) and W2 (M=5) plus the correctness checks.
"""

from __future__ import annotations

from . import common
from .common import WORKLOADS, inner_slices

try:
    import jax
    import jax.numpy as jnp
    from jax import lax
except ImportError:  # the benchmark harness asks available() first
    jax = None

VMAP, UNROLLED = "jax jit+vmap", "jax jit, tasks unrolled"
VARIANTS = (VMAP,)  # what run() times by default
# Opt-in (run(..., variants=[UNROLLED])): the plain reference under jit, the M tasks unrolled instead of vmapped.
# On XLA:CPU it runs W2 ~2.4x faster than vmap here: vmap turns the per-task kernels into a grouped convolution.
EXTRA_VARIANTS = (UNROLLED,)


def available() -> bool:
    return jax is not None


# ---------------------------------------------------------------------------------------------- models and losses


def mlp_apply(p, x):
    h = jax.nn.relu(x @ p["w0"] + p["b0"])
    h = jax.nn.relu(h @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def conv4_apply(p, x):  # x: (N, 28, 28, 1) NHWC; kernels HWIO
    for i in range(common.CONV_LAYERS):
        x = lax.conv_general_dilated(x, p[f"c{i}"], window_strides=(2, 2), padding=((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.relu(x + p[f"cb{i}"])
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]  # (h, w, c) flatten, the canonical order


def mse(pred, y):
    return jnp.mean((pred - y) ** 2)


def cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def make_adapt(workload: str):
    """The single-task inner loop: a few plain SGD steps from `params` on the task's support set."""
    w = WORKLOADS[workload]
    apply, loss = (mlp_apply, mse) if workload == "W1" else (conv4_apply, cross_entropy)

    def task_loss(params, x, y):
        return loss(apply(params, x), y)

    def adapt(params, x, y):
        for sl in inner_slices(w, x.shape[0]):  # unrolled: 5 static steps, static slices
            g = jax.grad(task_loss)(params, x[sl], y[sl])
            params = jax.tree.map(lambda p, g: p - w.inner_lr * g, params, g)
        return params

    return adapt


def make_meta_step(workload: str):
    """The fast variant: vmap the inner loop over the meta-batch, average, Reptile update, all in one jit.

    The old parameters are donated: the step returns new ones of the same shapes, so XLA may reuse the buffers.
    """
    adapt, beta = make_adapt(workload), WORKLOADS[workload].outer_lr

    def meta_step(params, xs, ys):
        adapted = jax.vmap(adapt, in_axes=(None, 0, 0))(params, xs, ys)
        return jax.tree.map(lambda p, a: p + beta * (a.mean(axis=0) - p), params, adapted)

    return jax.jit(meta_step, donate_argnums=0)


def reference_meta_step(workload: str):
    """Plain reference: no jit, no vmap; a Python loop over tasks, then the Reptile average (jitted: UNROLLED)."""
    adapt, beta = make_adapt(workload), WORKLOADS[workload].outer_lr

    def meta_step(params, xs, ys):
        adapted = [adapt(params, xs[i], ys[i]) for i in range(xs.shape[0])]
        mean = jax.tree.map(lambda *a: sum(a) / len(a), *adapted)
        return jax.tree.map(lambda p, m: p + beta * (m - p), params, mean)

    return meta_step


# ---------------------------------------------------------------------------------------------- harness interface


def _device(device: str):
    try:
        return jax.devices("cpu" if device == "cpu" else "gpu")[0]
    except RuntimeError:  # no such backend
        return None


def _final_params(step, workload: str, meta_batch: int, steps: int, dev) -> dict:
    params = jax.device_put(common.init_params(workload), dev)
    pool = jax.device_put(common.data_pool(workload, meta_batch), dev)
    for t in range(steps):
        params = step(params, *pool[t % len(pool)])
    return {k: jax.device_get(v) for k, v in params.items()}


def reference(workload: str, meta_batch_size: int | None = None, steps: int = 3) -> dict:
    """Parameters (canonical numpy layout) after `steps` meta-steps of the plain reference, on CPU."""
    m = meta_batch_size or common.DEFAULT_META_BATCH[workload]
    with jax.default_matmul_precision("highest"):
        return _final_params(reference_meta_step(workload), workload, m, steps, _device("cpu"))


def _make(variant: str, workload: str):
    if variant == VMAP:
        return make_meta_step(workload)
    assert variant == UNROLLED, variant
    return jax.jit(reference_meta_step(workload), donate_argnums=0)


def check(workload: str, variant: str = VMAP, meta_batch_size: int | None = None, steps: int = 3) -> float:
    """Max |difference| between the parameters after `steps` meta-steps of `variant` and of the plain reference."""
    m = meta_batch_size or common.DEFAULT_META_BATCH[workload]
    with jax.default_matmul_precision("highest"):
        fast = _final_params(_make(variant, workload), workload, m, steps, _device("cpu"))
    return common.max_abs_diff(fast, reference(workload, m, steps))


def run(workload: str, meta_batch_size: int, *, device: str = "cpu", repeats: int = 5, min_block_s: float = 0.2,
        warmup: int = 3, variants=None, seed: int = 0) -> list[dict]:
    if not available() or (dev := _device(device)) is None:
        return []
    rows = []
    for variant in variants or VARIANTS:
        if variant not in VARIANTS + EXTRA_VARIANTS:
            continue
        # Full float32 everywhere: on NVIDIA GPUs XLA would otherwise use TF32 for matmuls and convs.
        with jax.default_matmul_precision("highest"):
            step_fn = _make(variant, workload)
            pool = jax.device_put(common.data_pool(workload, meta_batch_size, seed), dev)
            state = {"params": jax.device_put(common.init_params(workload, seed), dev), "i": 0}

            def step():
                xs, ys = pool[state["i"] % len(pool)]
                state["params"] = step_fn(state["params"], xs, ys)  # dispatched asynchronously
                state["i"] += 1

            def sync():
                jax.block_until_ready(state["params"])

            samples = common.time_meta_steps(step, sync, repeats=repeats, min_block_s=min_block_s, warmup=warmup)
        rows.append(common.result("jax", jax.__version__, variant, workload, meta_batch_size, device, samples))
    return rows


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-block-s", type=float, default=0.2)
    ap.add_argument("--all", action="store_true", help="also time the opt-in variants " + repr(EXTRA_VARIANTS))
    args = ap.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    variants = VARIANTS + EXTRA_VARIANTS if args.all else VARIANTS
    rows, checks = [], {}
    for wl, m in common.DEFAULT_META_BATCH.items():
        rows += run(wl, m, device=args.device, repeats=args.repeats, min_block_s=args.min_block_s, variants=variants)
        for v in variants:
            checks[(v, wl)] = check(wl, v)
    common.print_table(rows, checks)
    common.print_cross_check()


if __name__ == "__main__":
    main()
