"""What every algorithm returns, and the task-batching plumbing they share."""

from __future__ import annotations

from typing import Callable, NamedTuple

import mlx.core as mx

from reptile_fn import tree as T
from reptile_fn.inner import InnerLoop
from reptile_fn.tree import Tree


class MetaStep(NamedTuple):
    """``init(params) -> state``; ``step(params, state, batch, key) -> (params, state, metrics)``;
    ``inner(state) -> InnerLoop``.

    ``batch`` is an ``Episode`` stacked on a leading task axis; ``key`` is one key (split into one per
    task) or the tasks' own keys, shape (n_tasks, 2). ``state`` and ``metrics`` are trees of arrays
    (nothing is pulled to the host). ``inner(state)`` is the inner loop a meta-learned init adapts with
    at evaluation: the run's loop with what the algorithm learned or kept filled in (Meta-SGD's
    per-parameter rates as ``lr``, a kept inner optimizer state as ``start``), the same shape for every
    algorithm and wrapper.
    """

    init: Callable[[Tree], Tree]
    step: Callable
    inner: Callable[[Tree], InnerLoop]


class Reduce(NamedTuple):
    """How a step's tasks relate to the whole meta-batch when it is split into equal blocks (one per
    process, passed in by the run layer): ``mean(tree)`` turns this block's means into the meta-batch's,
    and there are ``blocks`` blocks. The default is one block: the step holds the whole meta-batch."""

    mean: Callable[[Tree], Tree] = lambda tree: tree
    blocks: int = 1


LOCAL = Reduce()


def task_keys(key: mx.array, n_tasks: int) -> mx.array:
    """One key per task: ``key`` split in ``n_tasks``, or ``key`` itself when it already holds (n_tasks, 2) keys."""
    return key if key.ndim == 2 else mx.random.split(key, n_tasks)


def over_tasks(fn: Callable, shared: Tree, per_task: tuple, *, batched: bool):
    """Map ``fn(shared, *task_args)`` over the leading task axis of ``per_task``.

    ``batched=True`` uses ``mx.vmap``; ``False`` is the serial reference (a Python loop whose
    results are stacked), kept so that tests can compare the two.
    """
    counts = [a.shape[0] if a.ndim else None for a in per_task]
    if len(set(counts)) != 1 or counts[0] in (None, 0):
        raise ValueError(f"a meta-batch's fields have {counts} tasks on their leading axis; give every field (support_x, "
                         "support_y, query_x, query_y) the same number of tasks, at least one, first")
    if min(a.ndim for a in per_task) < 2:  # every field holds (tasks, examples, ...): one episode alone lacks the first
        raise ValueError(f"a meta-batch's fields have shapes {[tuple(a.shape) for a in per_task]}: one has no task axis "
                         "before its examples; a single episode is a meta-batch of one task: "
                         "Episode(*(a[None] for a in episode))")
    if batched:
        return mx.vmap(fn, in_axes=(None,) + (0,) * len(per_task))(shared, *per_task)
    n = per_task[0].shape[0]
    outs = [fn(shared, *(a[i] for a in per_task)) for i in range(n)]
    return T.stack(outs)


def compile_iterations(step: Callable, n: int, sample: Callable | None = None) -> Callable:
    """Run ``n`` meta-iterations in one compiled call, to amortise per-call dispatch overhead.

    Without ``sample``: ``run(params, state, batches, keys)`` with ``batches`` an Episode whose
    leaves have a leading axis of n (pre-sampled) and ``keys`` (n, 2). With ``sample(key) ->
    Episode``: ``run(params, state, keys)`` samples each batch on the device from ``keys[i]``
    (split into a sampling and a step key). Returns ``(params, state, metric_sums)``: metrics
    summed over the n iterations.
    """

    def loop(params, state, keys, batch_at):
        sums = None
        for i in range(n):
            batch, key = batch_at(i)
            params, state, metrics = step(params, state, batch, key)
            sums = metrics if sums is None else {k: sums[k] + v for k, v in metrics.items()}
        return params, state, sums

    if sample is None:
        def run(params, state, batches, keys):
            return loop(params, state, keys, lambda i: (type(batches)(*(b[i] for b in batches)), keys[i]))
    else:
        def run(params, state, keys):
            def at(i):
                sample_key, step_key = mx.random.split(keys[i])
                return sample(sample_key), step_key
            return loop(params, state, keys, at)

    return mx.compile(run)
