"""JAX peer: the Reptile meta-step as pure JAX: params a pytree, jax.grad inside, jax.vmap over tasks, jax.jit around it all;
and W4's evaluation, `jax.jit(jax.vmap(adapt_and_score))` over the episodes.

Run `python -m benchmarks.peers.jax_peer` for a table of W1 (M=8), W2 (M=5) and W4 (100 episodes) plus the
correctness checks (W1, W2: against a plain JAX reference; W4: against reptile_fn's evaluation on the same data).
"""

from __future__ import annotations

import numpy as np

from . import common
from .common import WORKLOADS, inner_slices

try:
    import jax
    import jax.numpy as jnp
    from jax import lax
except ImportError:  # the benchmark harness asks available() first
    jax = None

VMAP, UNROLLED = "jax jit+vmap", "jax jit, tasks unrolled"
EVAL_VMAP, EVAL_MAP = "jax jit+vmap (episodes)", "jax jit, lax.map over episodes"
VARIANTS = (VMAP, EVAL_VMAP)  # what run() times by default (each on the workloads it applies to, see WORKLOAD_VARIANTS)
# Opt-in (run(..., variants=[UNROLLED])): the plain reference under jit, the M tasks unrolled instead of vmapped.
# On XLA:CPU it runs W2 ~2.4x faster than vmap here: vmap turns the per-task kernels into a grouped convolution.
# EVAL_MAP: W4 with the episodes in a sequential lax.map (one episode's convolutions at a time) instead of vmap.
EXTRA_VARIANTS = (UNROLLED, EVAL_MAP)
WORKLOAD_VARIANTS = {"W1": (VMAP, UNROLLED), "W2": (VMAP, UNROLLED), "W4": (EVAL_VMAP, EVAL_MAP)}  # no W3 peer in JAX


def available(workload: str | None = None) -> bool:
    return jax is not None and (workload is None or workload in WORKLOAD_VARIANTS)


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


# ---------------------------------------------------------------------------------------------- W4: evaluation


def conv4_bn_apply(p, x):
    """conv4 with batch norm over the statistics of the batch it is applied to (as models.conv4(norm="batch"))."""
    for i in range(common.CONV_LAYERS):
        x = lax.conv_general_dilated(x, p[f"c{i}"], window_strides=(2, 2), padding=((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p[f"cb{i}"]
        mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
        var = jnp.var(x, axis=(0, 1, 2), keepdims=True)  # population variance, as mx.var
        x = jax.nn.relu((x - mean) * lax.rsqrt(var + common.BN_EPS) * p[f"s{i}"] + p[f"o{i}"])
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


def make_adapt_and_score(steps: int | None = None):
    """One episode: `steps` (default 50) full-batch Adam steps on the support set from fresh moments, then the
    query set's cross-entropy and accuracy. Adam as reptile_fn.optim.adam: p -= lr * m_hat / (sqrt(v_hat) + eps)."""
    w = common.W4
    steps = w.inner_steps if steps is None else steps
    (b1, b2), lr, eps = w.adam_betas, w.inner_lr, common.ADAM_EPS

    def task_loss(params, x, y):
        return cross_entropy(conv4_bn_apply(params, x), y)

    def adapt_and_score(params, sx, sy, qx, qy):
        def body(t, carry):
            p, m, v = carry
            g = jax.grad(task_loss)(p, sx, sy)
            m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
            v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
            c1, c2 = 1 - b1 ** (t + 1.0), 1 - b2 ** (t + 1.0)
            p = jax.tree.map(lambda p_, m_, v_: p_ - lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps), p, m, v)
            return p, m, v

        zeros = jax.tree.map(jnp.zeros_like, params)
        adapted, _, _ = lax.fori_loop(0, steps, body, (params, zeros, zeros))
        logits = conv4_bn_apply(adapted, qx)  # transductive: the query batch's own statistics
        return cross_entropy(logits, qy), jnp.mean((jnp.argmax(logits, axis=-1) == qy).astype(jnp.float32))

    return adapt_and_score


def make_evaluate(variant: str = EVAL_VMAP, steps: int | None = None):
    """jit(vmap(adapt_and_score)) over the episodes (EVAL_MAP: jit(lax.map(...))): per-episode (loss, accuracy)."""
    one = make_adapt_and_score(steps)
    if variant == EVAL_VMAP:
        return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, 0)))
    assert variant == EVAL_MAP, variant
    return jax.jit(lambda params, *episodes: lax.map(lambda e: one(params, *e), episodes))


def _evaluation(variant: str, n_episodes: int, steps: int, dev, seed: int = 0) -> dict:
    params = jax.device_put(common.conv4_bn_params(seed), dev)
    episodes = jax.device_put(common.eval_episodes(n_episodes, seed), dev)
    loss, acc = make_evaluate(variant, steps)(params, *episodes)
    return {"loss": jax.device_get(loss), "metric": jax.device_get(acc)}


def eval_differences(variant: str = EVAL_VMAP, n_episodes: int = 16, steps: int = 3) -> np.ndarray:
    """Per episode, max(|query loss difference|, |query accuracy difference|) between `variant` after `steps` inner
    steps and reptile_fn's evaluation (evaluate.per_episode_curves) on the same episodes and starting parameters."""
    from . import reptile_side  # imports reptile_fn (and MLX) only when asked

    with jax.default_matmul_precision("highest"):
        ours = _evaluation(variant, n_episodes, steps, _device("cpu"))
    theirs = reptile_side.eval_reference(n_episodes, steps)
    return np.maximum(*(np.abs(np.asarray(ours[k], np.float64) - theirs[k]) for k in ("loss", "metric")))


def check_eval(variant: str = EVAL_VMAP, n_episodes: int = 16, steps: int = 3) -> float:
    """The median over episodes of `eval_differences`: ~1e-7 when the math agrees.

    The median, not the max: in float32 a few episodes hold a ReLU input within rounding of zero (seen: -3e-7 in MLX,
    +4e-7 in float64), so one unit's gradient is on in one framework and off in the other, and that episode's loss
    after a few Adam steps differs by up to ~1e-3 (and its accuracy by one query image). A real difference in the
    math (Adam, batch norm, the convolutions) moves every episode. `python -m benchmarks.peers.jax_peer` prints both.
    """
    return float(np.median(eval_differences(variant, n_episodes, steps)))


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
    """Max |difference| between the parameters after `steps` meta-steps of `variant` and of the plain reference;
    W4: between the query loss/accuracy after `steps` inner steps and reptile_fn's (check_eval)."""
    if workload == "W4":
        return check_eval(EVAL_VMAP if variant == VMAP else variant, meta_batch_size or 16, steps)
    m = meta_batch_size or common.DEFAULT_META_BATCH[workload]
    with jax.default_matmul_precision("highest"):
        fast = _final_params(_make(variant, workload), workload, m, steps, _device("cpu"))
    return common.max_abs_diff(fast, reference(workload, m, steps))


def run(workload: str, meta_batch_size: int, *, device: str = "cpu", repeats: int = 5, min_block_s: float = 0.2,
        warmup: int = 3, variants=None, seed: int = 0) -> list[dict]:
    if not available(workload) or (dev := _device(device)) is None:
        return []
    rows = []
    for variant in variants or VARIANTS:
        if variant not in WORKLOAD_VARIANTS[workload] or variant not in VARIANTS + EXTRA_VARIANTS:
            continue
        if workload == "W4":
            samples = _time_eval(variant, meta_batch_size, dev, seed, repeats=repeats, min_block_s=min_block_s)
            rows.append(common.result("jax", jax.__version__, variant, workload, meta_batch_size, device, samples))
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


def _time_eval(variant: str, n_episodes: int, dev, seed: int, *, repeats: int, min_block_s: float) -> list[float]:
    """Episodes/s of W4: each timed call adapts and scores all `n_episodes` episodes (one warm-up call compiles)."""
    with jax.default_matmul_precision("highest"):
        fn = make_evaluate(variant)
        params = jax.device_put(common.conv4_bn_params(seed), dev)
        episodes = jax.device_put(common.eval_episodes(n_episodes, seed), dev)
        out = {}

        def step():
            out["r"] = fn(params, *episodes)

        def sync():
            jax.block_until_ready(out["r"])

        samples = common.time_meta_steps(step, sync, repeats=repeats, min_block_s=min_block_s, warmup=1)
    return [s * n_episodes for s in samples]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-block-s", type=float, default=0.2)
    ap.add_argument("--all", action="store_true", help="also time the opt-in variants " + repr(EXTRA_VARIANTS))
    ap.add_argument("--workloads", default="W1,W2,W4")
    args = ap.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    variants = VARIANTS + EXTRA_VARIANTS if args.all else VARIANTS
    rows, checks = [], {}
    for wl in args.workloads.split(","):
        if wl not in WORKLOAD_VARIANTS:
            print(f"(skipping {wl}: no JAX peer)")
            continue
        m = common.DEFAULT_SIZE[wl]
        rows += run(wl, m, device=args.device, repeats=args.repeats, min_block_s=args.min_block_s, variants=variants)
        for v in variants:
            if v in WORKLOAD_VARIANTS.get(wl, ()):
                checks[(v, wl)] = check(wl, v)
    common.print_table(rows, checks)
    if "W4" in args.workloads.split(","):
        d = eval_differences()
        print(f"W4 against reptile_fn, 16 episodes after 3 inner steps: per-episode max(|loss diff|, |accuracy diff|) "
              f"median {np.median(d):.1e}, max {d.max():.1e}; {int((d > 1e-4).sum())} episode(s) over 1e-4")
    common.print_cross_check()


if __name__ == "__main__":
    main()
