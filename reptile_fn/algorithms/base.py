"""What every algorithm returns, and the task-batching plumbing they share."""

from __future__ import annotations

from typing import Callable, NamedTuple

import mlx.core as mx

from reptile_fn import tree as T
from reptile_fn.tree import Tree


class MetaStep(NamedTuple):
    """``init(params) -> state``; ``step(params, state, batch, key) -> (params, state, metrics)``.

    ``batch`` is an ``Episode`` stacked on a leading task axis; ``state`` and ``metrics`` are trees
    of arrays (nothing is pulled to the host).
    """

    init: Callable[[Tree], Tree]
    step: Callable


def over_tasks(fn: Callable, shared: Tree, per_task: tuple, *, batched: bool):
    """Map ``fn(shared, *task_args)`` over the leading task axis of ``per_task``.

    ``batched=True`` uses ``mx.vmap``; ``False`` is the serial reference (a Python loop whose
    results are stacked), kept so that tests can compare the two.
    """
    if batched:
        return mx.vmap(fn, in_axes=(None,) + (0,) * len(per_task))(shared, *per_task)
    n = per_task[0].shape[0]
    outs = [fn(shared, *(a[i] for a in per_task)) for i in range(n)]
    return T.stack(outs)
