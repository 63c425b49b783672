"""Baseline initializations to compare a meta-learned one against, adapted by the same inner loop.

- ``random``: a fresh ``model.init``.
- ``transfer``: one model trained jointly on the pooled support and query data of training tasks
  (each task's labels as given), then fine-tuned on the support set: the "pretrained" baseline of
  Finn et al. 2017 and standard transfer learning.
- ``head``: the transfer model with a frozen body; only ``head.*`` adapts (head-only fine-tuning).

A baseline is an ``Init(params, trainable)``: where to start and which leaves adapt.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import mlx.core as mx

from reptile_fn import optim
from reptile_fn import tree as T
from reptile_fn.errors import ConfigError
from reptile_fn.episode import Sampler
from reptile_fn.models import HEAD, Model
from reptile_fn.tree import PathPredicate, Tree

BASELINES = ("random", "transfer", "head")


class Init(NamedTuple):
    params: Tree
    trainable: PathPredicate | None  # None: every leaf adapts


def pretrain(model: Model, loss: Callable, tasks: Sampler, key: mx.array, *, iterations: int = 2000,
             tasks_per_batch: int = 8, lr: float = 1e-3, on_step: Callable[[int], None] | None = None) -> Tree:
    """Adam on the pooled support+query points of ``tasks_per_batch`` training tasks per step
    (``on_step(1)`` after each, for progress)."""
    init_key, data_key = mx.random.split(key)
    params = model.init(init_key)
    adam = optim.adam(lr)
    state = adam.init(params)
    value_and_grad = mx.value_and_grad(lambda p, x, y: loss(model.apply(p, x), y))

    @mx.compile
    def step(params, state, k, t):
        ep = tasks.sample_train(k, tasks_per_batch)
        x = mx.concatenate([ep.support_x, ep.query_x], axis=1)
        y = mx.concatenate([ep.support_y, ep.query_y], axis=1)
        value, grads = value_and_grad(params, x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:]))
        updates, state = adam.update(grads, state, t)
        return optim.apply_updates(params, updates), state, value

    for t, k in enumerate(mx.random.split(data_key, iterations)):
        params, state, _ = step(params, state, k, mx.array(t, dtype=mx.int32))
        mx.async_eval(params, state)
        if on_step is not None and t % 100 == 99:
            mx.eval(params)
            on_step(100)
    mx.eval(params)
    return params


def make_baselines(names, model: Model, loss: Callable, tasks: Sampler, *, random_key: mx.array,
                   transfer_key: mx.array, pretrain_iterations: int = 2000,
                   on_step: Callable[[int], None] | None = None) -> dict[str, Init]:
    """The requested baselines (any of ``BASELINES``), deterministic given the keys."""
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    out: dict[str, Init] = {}
    transferred = None
    for name in names:
        if name == "random":
            out[name] = Init(model.init(random_key), None)
            continue
        if transferred is None:
            transferred = pretrain(model, loss, tasks, transfer_key, iterations=pretrain_iterations, on_step=on_step)
        out[name] = Init(transferred, None if name == "transfer" else T.match(HEAD))
    return out


def steps_to_reach(curve: list[float], target: float, *, higher_is_better: bool) -> int | None:
    """First inner step at which a mean curve reaches ``target`` (None if it never does)."""
    for t, v in enumerate(curve):
        if (v >= target) if higher_is_better else (v <= target):
            return t
    return None
