"""Outer-loop optimizers as pure ``(init, update)`` pairs over trees, in the style of optax.

``update(grads, state, lr) -> (updates, state)``; apply with ``θ ← θ − updates``. The learning
rate is an argument of ``update`` (not of the constructor) so a schedule can live in the step.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import mlx.core as mx
from mlx.utils import tree_map

from reptile_fn import tree as T
from reptile_fn.tree import Tree

OUTER_OPTIMIZERS = ("sgd", "adam")


class Optimizer(NamedTuple):
    init: Callable[[Tree], Tree]
    update: Callable[[Tree, Tree, mx.array], tuple[Tree, Tree]]


def sgd() -> Optimizer:
    """updates = lr · g."""
    return Optimizer(lambda params: {}, lambda g, state, lr: (T.scale(g, lr), state))


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adam (Kingma & Ba 2015): updates = lr · m̂ / (√v̂ + ε)."""

    def init(params: Tree) -> Tree:
        return {"m": T.zeros_like(params), "v": T.zeros_like(params), "count": mx.array(0, dtype=mx.int32)}

    def update(g: Tree, state: Tree, lr: mx.array) -> tuple[Tree, Tree]:
        count = state["count"] + 1
        m = tree_map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, state["m"], g)
        v = tree_map(lambda v_, g_: b2 * v_ + (1 - b2) * mx.square(g_), state["v"], g)
        c1 = 1 - mx.power(mx.array(b1), count.astype(mx.float32))
        c2 = 1 - mx.power(mx.array(b2), count.astype(mx.float32))
        updates = tree_map(lambda m_, v_: lr * (m_ / c1) / (mx.sqrt(v_ / c2) + eps), m, v)
        return updates, {"m": m, "v": v, "count": count}

    return Optimizer(init, update)


def make(name: str) -> Optimizer:
    if name == "sgd":
        return sgd()
    if name == "adam":
        return adam()
    raise ValueError(f"unknown outer optimizer {name!r}; use one of {OUTER_OPTIMIZERS}")


def linear_schedule(start: float, end: float | None, total: int | None) -> Callable[[mx.array], mx.array]:
    """lr(t) = start + (end − start)·t/total, as Nichol et al. anneal the meta step size; constant if end is None."""
    if end is None or not total:
        return lambda t: mx.array(start, dtype=mx.float32)
    return lambda t: start + (end - start) * mx.minimum(t.astype(mx.float32) / total, 1.0)
