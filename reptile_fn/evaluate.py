"""Few-shot evaluation: query loss/metric after 0..K inner steps, mean ± 95% CI over episodes.

For each held-out episode, the initialization is adapted on the support set with the run's
``inner.InnerLoop`` (its ``init_state`` and ``step``: the loop training runs, not a copy) and scored
on the query set after every step. The interval is the normal approximation 1.96 · s / √n with s
the sample standard deviation over episodes.
"""

from __future__ import annotations

from typing import Callable, Iterable

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map

from reptile_fn import inner
from reptile_fn import tree as T
from reptile_fn.episode import Episode
from reptile_fn.inner import Apply, InnerLoop, Loss
from reptile_fn.models import nontransductive
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


# Episodes adapted at once are bounded by their input size (elements of x): past a few thousand 28×28
# images a step's activations leave the CPU caches (measurements: research/evaluation_chunks.md).
CHUNK_INPUT_ELEMENTS = 2000 * 28 * 28


def per_episode_curves(
    loop: InnerLoop,
    apply: Apply,
    loss: Loss,
    params: Tree,
    episodes: Episode,
    *,
    metric: Callable[[mx.array, mx.array], mx.array] | None = None,
    key: mx.array | None = None,
    chunk_size: int = 250,
    transductive: bool = True,
    record: list[int] | None = None,
    split: Callable[[Episode], Iterable[tuple[np.ndarray, Episode]]] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    objective: tuple[Apply, Loss] | None = None,
    rehead: Callable[[Tree, tuple], Tree] | None = None,
) -> dict[str, np.ndarray]:
    """Query loss (and metric) of every episode after the ``record`` steps of ``loop`` (default
    ``recorded_steps(loop.steps)``): arrays (n_episodes, len(record)).

    Each episode adapts with the inner loop's own ``inner.init_state`` and ``inner.step``, run one
    compiled, episode-batched step at a time (so a 50-step evaluation compiles one step, not 50
    unrolled ones), starting from ``loop.start`` when the run kept an inner state.
    ``transductive=False`` scores each query example on its own batch (support ∪ {x}), so batch-norm
    statistics never mix query examples (``models.nontransductive``). ``split(episodes)``: the chunks
    to adapt at once, as (episode indices, episodes) pairs covering every episode once (e.g.
    ``text.batching.by_length``); default: ``chunk_size`` consecutive episodes. Each episode keeps its
    own key either way. ``on_chunk(n)`` is told when n more episodes are done (progress).

    ``loop.head_init`` rebuilds each episode's head from its support set before the first step (as
    ``inner.adapt``). ``objective``: the ``(apply, loss)`` the support steps minimize when it is not the
    scored one (SetFit-style: a pair loss on features, ``heads.pair_loss``); ``rehead(params, support)``
    sets the head before every scoring (e.g. ``heads.prototype_head`` on the adapted features).
    """
    steps = loop.steps
    if record is not None and (list(record) != sorted(set(record)) or not all(0 <= t <= steps for t in record)):
        raise ValueError(f"record = {list(record)}: give increasing step counts from 0 to the loop's {steps} steps (the "
                         "curves' columns are in that order; a step past the last is never run)")
    record = set(recorded_steps(steps) if record is None else record)
    n = episodes.support_x.shape[0]
    keys = mx.random.split(key if key is not None else mx.random.key(0), n)
    fast0, frozen = T.partition(params, loop.trainable)
    start = inner.init_state(loop, fast0)
    step_full, step_mini, first = _compiled_steps(loop, (apply, loss), objective or (apply, loss), metric, frozen,
                                                  transductive, rehead)
    heads = None if loop.head_init is None else _head_init(loop, params, episodes)
    n_support, n_query = episodes.support_x.shape[1], episodes.query_x.shape[1]
    # non-transductive: each query example runs with the whole support set
    inputs = n_support + n_query if transductive else n_query * (n_support + 1)
    per_episode = inputs * int(np.prod(episodes.support_x.shape[2:]))
    chunk_size = max(1, min(chunk_size, CHUNK_INPUT_ELEMENTS // per_episode))
    pieces = consecutive(episodes, chunk_size) if split is None else split(episodes)
    parts, order = [], []
    for rows, (sx, sy, qx, qy) in pieces:
        m = sy.shape[0]  # inputs may be trees (packed text, text.batching.by_length): count by the labels
        order.append(np.asarray(rows))
        sl = mx.array(order[-1])
        mini = loop.batch_size is not None and loop.batch_size < sy.shape[1] and steps > 0
        if mini and not isinstance(sx, mx.array):
            raise ValueError("per_episode_curves: mini-batch inner steps (batch_size) need array inputs, the "
                             "split gave a tree (packed sentences?); use full-batch steps or a split that does not "
                             "pack (text.batching.by_length(..., pack=False))")
        idx = mx.vmap(lambda k: inner.minibatch_indices(k, sy.shape[1], loop.batch_size, steps))(keys[sl]) if mini else None
        fast = tree_map(lambda a: mx.broadcast_to(a, (m, *a.shape)), fast0) if heads is None else heads(sx, sy)
        opt = tree_map(lambda a: mx.broadcast_to(a, (m, *a.shape)), start.opt)
        seen = [first(fast, sx, sy, qx, qy)] if 0 in record else []
        for t in range(steps):
            scored = (t + 1) in record  # scoring the query set costs more than the step itself
            if idx is None:
                fast, opt, obs = step_full(fast, opt, start.t + mx.array(t), sx, sy, qx, qy)
            else:
                fast, opt, obs = step_mini(fast, opt, start.t + mx.array(t), sx, sy, idx[:, t], qx, qy)
            mx.async_eval(fast, opt, *(obs if scored else ()))
            if scored:
                seen.append(obs)
        parts.append([np.stack([np.array(o[i]) for o in seen], axis=1) for i in range(len(seen[0]))])
        if on_chunk is not None:
            on_chunk(m)
    return _in_order(parts, np.concatenate(order), n, len(record))


def _in_order(parts: list, order: np.ndarray, n: int, n_record: int) -> dict[str, np.ndarray]:
    """The chunks' (loss[, metric]) arrays put back in episode order."""
    if sorted(order.tolist()) != list(range(n)):
        raise ValueError(f"per_episode_curves: split must give every one of the {n} episodes exactly once")
    out = {}
    for i, name in enumerate(["loss", "metric"][: len(parts[0])]):
        out[name] = np.empty((n, n_record), dtype=parts[0][i].dtype)
        out[name][order] = np.concatenate([p[i] for p in parts])
    return out


def _compiled_steps(loop: InnerLoop, scored: tuple[Apply, Loss], objective: tuple[Apply, Loss], metric, frozen: Tree,
                    transductive: bool, rehead):
    """Compiled, episode-batched ``(step_full, step_mini, first)``: one inner step on ``objective`` (on the whole
    support set, or on mini-batch indices) followed by scoring the query set, and the score before any step."""
    apply, loss = scored
    score = (lambda p, sx, qx: apply(p, qx)) if transductive else nontransductive(apply)
    value_and_grad = inner.support_value_and_grad(*objective)

    def observe(fast, sx, sy, qx, qy):
        p = T.combine(fast, frozen)
        out = score(p if rehead is None else rehead(p, (sx, sy)), sx, qx)
        return (loss(out, qy), metric(out, qy)) if metric is not None else (loss(out, qy),)

    def step(fast, opt, t, sx, sy, idx, qx, qy):
        batch = (sx, sy) if idx is None else (sx[idx], sy[idx])
        fast, state, _ = inner.step(loop, value_and_grad, fast, frozen, inner.InnerState(opt, t), batch)
        return fast, state.opt, observe(fast, sx, sy, qx, qy)

    per_episode = (0, 0, None, 0, 0, 0, 0, 0)
    step_full = mx.compile(mx.vmap(lambda f, o, t, sx, sy, qx, qy: step(f, o, t, sx, sy, None, qx, qy),
                                   in_axes=per_episode[:5] + (0, 0)))
    step_mini = mx.compile(mx.vmap(step, in_axes=per_episode))
    first = mx.compile(mx.vmap(observe))
    return step_full, step_mini, first


def _head_init(loop: InnerLoop, params: Tree, episodes: Episode) -> Callable:
    """Compiled ``(support_x, support_y) -> fast``: each episode's trainable leaves after ``loop.head_init``.

    What ``head_init`` sets must be trainable: a frozen leaf is shared by every episode of a chunk."""
    one = type(episodes)(*(tree_map(lambda a: a[0], a) for a in episodes))
    fast, frozen = T.partition(loop.head_init(params, (one.support_x, one.support_y)), loop.trainable)
    before = dict(tree_flatten(T.partition(params, loop.trainable)[1]))
    if any(before.get(p) is not a for p, a in tree_flatten(frozen)):
        raise ValueError("the inner loop's head_init sets leaves that do not adapt; make the head trainable")
    return mx.compile(mx.vmap(lambda sx, sy: T.partition(loop.head_init(params, (sx, sy)), loop.trainable)[0]))


def consecutive(episodes: Episode, size: int) -> Iterable[tuple[np.ndarray, Episode]]:
    """The default ``split``: chunks of ``size`` consecutive episodes, as (indices, episodes)."""
    n = episodes.support_x.shape[0]
    for i in range(0, n, size):
        yield np.arange(i, min(i + size, n)), type(episodes)(*(a[i:i + size] for a in episodes))


def recorded_steps(steps: int) -> list[int]:
    """Steps at which evaluation scores the query set: all up to 20, then 0..10 and every 5th (and the last)."""
    if steps <= 20:
        return list(range(steps + 1))
    return sorted(set(range(11)) | set(range(0, steps + 1, 5)) | {steps})


def few_shot_curve(loop: InnerLoop, apply: Apply, loss: Loss, params: Tree, episodes: Episode, **kwargs) -> dict:
    """Mean and 95% CI of the query loss (and metric) at the recorded steps, as JSON-ready lists.

    ``steps`` lists the inner-step counts the means refer to (``recorded_steps``); keyword arguments
    as ``per_episode_curves``.
    """
    curves = per_episode_curves(loop, apply, loss, params, episodes, **kwargs)
    return summarize(curves, kwargs.get("record") or recorded_steps(loop.steps))


def summarize(curves: dict[str, np.ndarray], record: list[int]) -> dict:
    """Per-episode curves (``per_episode_curves``) as JSON-ready means and 95% CIs at the recorded steps."""
    out: dict = {"steps": list(record), "episodes": int(next(iter(curves.values())).shape[0])}
    for name, values in curves.items():
        m, ci = mean_ci(values)
        out[name] = {"mean": m.tolist(), "ci95": ci.tolist()}
    return out

