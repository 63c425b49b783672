"""Small shared helpers for the tests (not fixtures: plain functions)."""

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from reptile_fn.episode import Episode


def max_abs_diff(a, b) -> float:
    fa, fb = dict(tree_flatten(a)), dict(tree_flatten(b))
    assert fa.keys() == fb.keys(), (sorted(fa), sorted(fb))
    return max((float(mx.max(mx.abs(fa[k] - fb[k]))) for k in fa), default=0.0)


def same(a, b, atol: float = 0.0) -> bool:
    return max_abs_diff(a, b) <= atol


def regression_batch(seed: int, n_tasks: int, n: int = 10, d_in: int = 1, d_out: int = 1) -> Episode:
    """Random linear-plus-sine regression tasks, stacked on a task axis."""
    k = mx.random.split(mx.random.key(seed), 4)
    x = mx.random.uniform(-2, 2, (n_tasks, 2 * n, d_in), key=k[0])
    w = mx.random.normal((n_tasks, d_in, d_out), key=k[1])
    y = mx.sin(x @ w) + 0.5 * (x @ w)
    return Episode(x[:, :n], y[:, :n], x[:, n:], y[:, n:])


def to_np(tree):
    return {k: np.array(v) for k, v in tree_flatten(tree)}


def meta_train_sine(meta, model, iterations: int, *, k_shot: int = 10, query_size: int = 10, meta_batch: int = 8):
    """Meta-train on fresh sine tasks; returns (tasks, initial params, trained params, state)."""
    from reptile_fn.tasks import make_distribution

    tasks = make_distribution("sine", k_shot=k_shot, query_size=query_size, num_train_tasks=0, seed=0)
    params = init = model.init(mx.random.key(0))
    state = meta.init(params)
    sample = mx.compile(lambda k: tasks.sample_train(k, meta_batch))
    for i in range(iterations):
        k1, k2 = mx.random.split(mx.random.key(i))
        params, state, _ = meta.step(params, state, sample(k1), k2)
        mx.async_eval(params, state)
    return tasks, init, params, state


def outer(name: str, lr: float, final: float | None = None, iterations: int | None = None):
    """An outer optimizer ``name`` at ``lr``, annealed linearly to ``final`` over ``iterations`` if given."""
    from reptile_fn import optim

    return optim.make(name, optim.linear_schedule(lr, final, iterations))
