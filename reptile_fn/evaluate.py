"""Few-shot evaluation: query loss/metric after 0..K inner steps, mean ± 95% CI over episodes.

For each held-out episode, the initialization is adapted on the support set with the shared
inner loop (``inner.adapt``) and scored on the query set after every step. The interval is
the normal approximation 1.96 · s / √n with s the sample standard deviation over episodes.
"""

from __future__ import annotations

from typing import Callable, Iterable

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

from reptile_fn import tree as T
from reptile_fn.inner import Apply, Loss, init_opt_state, inner_step, minibatch_indices, support_value_and_grad
from reptile_fn.models import nontransductive
from reptile_fn.tasks.base import Episode
from reptile_fn.tree import PathPredicate, Tree

Z95 = 1.96


def mean_ci(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% half-width 1.96·s/√n over ``axis`` (s with n−1 dof; zero width for n = 1)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    m = values.mean(axis=axis)
    if n < 2:
        return m, np.zeros_like(m)
    return m, Z95 * values.std(axis=axis, ddof=1) / np.sqrt(n)


# Episodes adapted at once are bounded by their input size (elements of x): a step holds activations of
# every image of the chunk, and past a few thousand 28×28 images they leave the CPU caches. Omniglot conv4,
# one core: 100 images per episode forward in 250 µs/image vmapped over 10 episodes, 480 µs over 80; a
# non-transductive chunk of 37,500 images (the old bound, set for memory) ran at 780 µs/image.
CHUNK_INPUT_ELEMENTS = 2000 * 28 * 28


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
    optimizer: str = "sgd",
    trainable: PathPredicate | None = None,
    inner_batch_size: int | None = None,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    record: list[int] | None = None,
    opt_state=None,
    t0=0,
    split: Callable[[Episode], Iterable[tuple[np.ndarray, Episode]]] | None = None,
) -> dict[str, np.ndarray]:
    """Query loss (and metric) of every episode after the ``record`` steps (default ``recorded_steps(steps)``):
    arrays (n_episodes, len(record)).

    The inner loop is ``inner.adapt``'s, run one compiled, episode-batched step at a time (so a
    50-step evaluation compiles one step, not 50 unrolled ones). ``transductive=False`` scores each
    query example on its own batch (support ∪ {x}), so batch-norm statistics never mix query
    examples (``models.nontransductive``). ``opt_state`` / ``t0``: the inner optimizer starts from
    this state and step count (``MetaStep.inner_opt``) instead of fresh, for every episode.
    ``split(episodes)``: the chunks to adapt at once, as (episode indices, episodes) pairs covering
    every episode once (e.g. ``tasks.text.by_length``: text episodes of similar length, cut to it);
    default: ``chunk_size`` consecutive episodes. Each episode keeps its own key either way.
    """
    score = (lambda p, sx, qx: apply(p, qx)) if transductive else nontransductive(apply)
    record = set(recorded_steps(steps) if record is None else record)
    n = episodes.support_x.shape[0]
    keys = mx.random.split(key if key is not None else mx.random.key(0), n)
    fast0, frozen = T.partition(params, trainable)
    value_and_grad = support_value_and_grad(apply, loss)
    kw = dict(optimizer=optimizer, adam_betas=adam_betas)

    def observe(fast, sx, qx, qy):
        out = score(T.combine(fast, frozen), sx, qx)
        return (loss(out, qy), metric(out, qy)) if metric is not None else (loss(out, qy),)

    def step(fast, opt, t, sx, sy, idx, qx, qy):
        batch = (sx, sy) if idx is None else (sx[idx], sy[idx])
        fast, opt, _ = inner_step(value_and_grad, fast, frozen, opt, batch, inner_lr, t0 + t, **kw)
        return fast, opt, observe(fast, sx, qx, qy)

    per_episode = (0, 0, None, 0, 0, 0, 0, 0)
    step_full = mx.compile(mx.vmap(lambda f, o, t, sx, sy, qx, qy: step(f, o, t, sx, sy, None, qx, qy),
                                   in_axes=per_episode[:5] + (0, 0)))
    step_mini = mx.compile(mx.vmap(step, in_axes=per_episode))
    first = mx.compile(mx.vmap(lambda sx, qx, qy: observe(fast0, sx, qx, qy)))
    n_support, n_query = episodes.support_x.shape[1], episodes.query_x.shape[1]
    # non-transductive: each query example runs with the whole support set
    inputs = n_support + n_query if transductive else n_query * (n_support + 1)
    per_episode = inputs * int(np.prod(episodes.support_x.shape[2:]))
    chunk_size = max(1, min(chunk_size, CHUNK_INPUT_ELEMENTS // per_episode))
    if split is None:
        pieces = ((np.arange(i, min(i + chunk_size, n)), type(episodes)(*(a[i:i + chunk_size] for a in episodes)))
                  for i in range(0, n, chunk_size))
    else:
        pieces = split(episodes)
    parts, order = [], []
    for rows, (sx, sy, qx, qy) in pieces:
        m = sy.shape[0]  # inputs may be trees (packed text, tasks.text.by_length): count by the labels
        order.append(np.asarray(rows))
        sl = mx.array(order[-1])
        mini = inner_batch_size is not None and inner_batch_size < sy.shape[1] and steps > 0
        if mini and not isinstance(sx, mx.array):
            raise ValueError("per_episode_curves: mini-batch inner steps (inner_batch_size) need array inputs, the "
                             "split gave a tree (packed sentences?); use full-batch steps or a split that does not "
                             "pack (tasks.text.by_length(..., pack=False))")
        idx = mx.vmap(lambda k: minibatch_indices(k, sy.shape[1], inner_batch_size, steps))(keys[sl]) if mini else None
        fast = tree_map(lambda a: mx.broadcast_to(a, (m, *a.shape)), fast0)
        start = init_opt_state(fast0, optimizer) if opt_state is None else opt_state
        opt = tree_map(lambda a: mx.broadcast_to(a, (m, *a.shape)), start)
        seen = [first(sx, qx, qy)] if 0 in record else []
        for t in range(steps):
            scored = (t + 1) in record  # scoring the query set costs more than the step itself
            if idx is None:
                fast, opt, obs = step_full(fast, opt, mx.array(t), sx, sy, qx, qy)
            else:
                fast, opt, obs = step_mini(fast, opt, mx.array(t), sx, sy, idx[:, t], qx, qy)
            mx.async_eval(fast, opt, *(obs if scored else ()))
            if scored:
                seen.append(obs)
        parts.append([np.stack([np.array(o[i]) for o in seen], axis=1) for i in range(len(seen[0]))])
    names = ["loss", "metric"][: len(parts[0])]
    order = np.concatenate(order)
    if sorted(order.tolist()) != list(range(n)):
        raise ValueError(f"per_episode_curves: split must give every one of the {n} episodes exactly once")
    out = {}
    for i, name in enumerate(names):
        out[name] = np.empty((n, len(record)), dtype=parts[0][i].dtype)
        out[name][order] = np.concatenate([p[i] for p in parts])
    return out


def recorded_steps(steps: int) -> list[int]:
    """Steps at which evaluation scores the query set: all up to 20, then 0..10 and every 5th (and the last)."""
    if steps <= 20:
        return list(range(steps + 1))
    return sorted(set(range(11)) | set(range(0, steps + 1, 5)) | {steps})


def few_shot_curve(apply: Apply, loss: Loss, params: Tree, episodes: Episode, **kwargs) -> dict:
    """Mean and 95% CI of the query loss (and metric) at the recorded steps, as JSON-ready lists.

    ``steps`` lists the inner-step counts the means refer to (``recorded_steps``).
    """
    curves = per_episode_curves(apply, loss, params, episodes, **kwargs)
    record = kwargs.get("record") or recorded_steps(kwargs["steps"])
    out: dict = {"steps": list(record), "episodes": int(episodes.support_x.shape[0])}
    for name, values in curves.items():
        m, ci = mean_ci(values)
        out[name] = {"mean": m.tolist(), "ci95": ci.tolist()}
    return out

