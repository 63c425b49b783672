"""Few-shot evaluation: query loss/metric after 0..K inner steps, mean ± 95% CI over episodes.

For each held-out episode, the initialization is adapted on the support set with the shared
inner loop (``inner.adapt``) and scored on the query set after every step. The interval is
the normal approximation 1.96 · s / √n with s the sample standard deviation over episodes.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

from reptile_fn.inner import Apply, Loss, adapt
from reptile_fn.models import nontransductive
from reptile_fn.tasks.base import Episode
from reptile_fn.tree import Tree

Z95 = 1.96


def mean_ci(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% half-width 1.96·s/√n over ``axis`` (s with n−1 dof; zero width for n = 1)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    m = values.mean(axis=axis)
    if n < 2:
        return m, np.zeros_like(m)
    return m, Z95 * values.std(axis=axis, ddof=1) / np.sqrt(n)


def per_episode_curves(
    apply: Apply,
    loss: Loss,
    params: Tree,
    episodes: Episode,
    *,
    inner_lr: float | Tree,
    steps: int,
    metric: Callable[[mx.array, mx.array], mx.array] | None = None,
    key: mx.array | None = None,
    chunk_size: int = 250,
    transductive: bool = True,
    **inner_kwargs,
) -> dict[str, np.ndarray]:
    """Query loss (and metric) of every episode after 0..steps inner steps: arrays (n_episodes, steps+1).

    ``inner_kwargs`` go to ``inner.adapt`` (optimizer, trainable, inner_batch_size, adam_betas).
    ``transductive=False`` scores each query example on its own batch (support ∪ {x}), so batch-norm
    statistics never mix query examples (``models.nontransductive``).
    """
    score = (lambda p, sx, qx: apply(p, qx)) if transductive else nontransductive(apply)
    n = episodes.support_x.shape[0]
    keys = mx.random.split(key if key is not None else mx.random.key(0), n)

    def one(p, sx, sy, qx, qy, k):
        def observe(q):
            out = score(q, sx, qx)
            return (loss(out, qy), metric(out, qy)) if metric is not None else (loss(out, qy),)

        _, _, observed = adapt(apply, loss, p, (sx, sy), lr=inner_lr, steps=steps, key=k, observe=observe,
                               **inner_kwargs)
        return observed

    run = mx.compile(mx.vmap(one, in_axes=(None, 0, 0, 0, 0, 0)))
    parts = []
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        out = run(params, episodes.support_x[sl], episodes.support_y[sl], episodes.query_x[sl],
                  episodes.query_y[sl], keys[sl])
        mx.eval(out)
        parts.append([np.array(o) for o in out])
    names = ["loss", "metric"][: len(parts[0])]
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}


def few_shot_curve(apply: Apply, loss: Loss, params: Tree, episodes: Episode, **kwargs) -> dict:
    """Mean and 95% CI of the query loss (and metric) at each step 0..K, as JSON-ready lists."""
    curves = per_episode_curves(apply, loss, params, episodes, **kwargs)
    out: dict = {"steps": list(range(next(iter(curves.values())).shape[1])), "episodes": int(episodes.support_x.shape[0])}
    for name, values in curves.items():
        m, ci = mean_ci(values)
        out[name] = {"mean": m.tolist(), "ci95": ci.tolist()}
    return out

