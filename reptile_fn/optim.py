"""Optimizers as pure ``(init, update)`` pairs over trees, in the style of optax: one module for the
inner loop (a task's adaptation) and the outer loop (the meta-update) alike.

``update(grads, state, step) -> (updates, state)``; apply with ``θ ← θ − updates``. ``step`` is the
0-based step number: the learning-rate schedule is evaluated at it and Adam's bias correction uses
``step + 1``. A Python int step stays a Python number (a fresh inner loop, unrolled); an array step
(the meta-iteration, or a kept inner state) is traced.

- SGD:  updates = α_t · g
- Adam (Kingma & Ba 2015): m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²,
  updates = α_t · m̂ / (√v̂ + ε),  m̂ = m / (1 − β1^(t+1)),  v̂ = v / (1 − β2^(t+1))

The learning rate α is a number, a schedule ``step -> α_t`` (``linear_schedule``), or a tree shaped
like the parameters (per-parameter rates, Meta-SGD). ``masked(opt, predicate)`` moves only the leaves
whose dotted paths match.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Union

import mlx.core as mx
from mlx.utils import tree_map, tree_map_with_path

from reptile_fn import tree as T
from reptile_fn.tree import PathPredicate, Tree

OPTIMIZERS = ("sgd", "adam")
Schedule = Callable[[object], mx.array]
LearningRate = Union[float, mx.array, Schedule, Tree]


class Optimizer(NamedTuple):
    """``init(params) -> state``; ``update(grads, state, step) -> (updates, state)``; ``learning_rate(step)``."""

    init: Callable[[Tree], Tree]
    update: Callable[[Tree, Tree, object], tuple[Tree, Tree]]
    learning_rate: Callable[[object], object]


def _rate(lr: LearningRate) -> Callable[[object], object]:
    return lr if callable(lr) else (lambda step: lr)


def _logged(rate: Callable[[object], object]) -> Callable[[object], object]:
    """The rate at a step as an array (a number becomes float32), so a compiled step can return it."""
    def at(step):
        r = rate(step)
        return r if isinstance(r, (mx.array, dict)) else mx.array(r, dtype=mx.float32)

    return at


def _scaled(lr, updates: Tree, fn: Callable) -> Tree:
    """``fn(lr, *leaves)`` leaf by leaf, with a per-leaf rate when ``lr`` is a tree."""
    if isinstance(lr, dict):
        if set(T.paths(lr)) != set(T.paths(updates[0])):  # tree_map: a bare KeyError, or extra rates ignored
            raise ValueError(f"a tree of learning rates needs one rate per trained parameter: it has "
                             f"{sorted(T.paths(lr))[:4]}, the parameters are {sorted(T.paths(updates[0]))[:4]}")
        return tree_map(lambda a, *leaves: fn(a, *leaves), lr, *updates)
    return tree_map(lambda *leaves: fn(lr, *leaves), *updates)


def sgd(lr: LearningRate) -> Optimizer:
    """updates = α_t · g."""
    rate = _rate(lr)

    def update(grads: Tree, state: Tree, step) -> tuple[Tree, Tree]:
        return _scaled(rate(step), (grads,), lambda a, g: g * a), state

    return Optimizer(lambda params: {}, update, _logged(rate))


def adam(lr: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adam: updates = α_t · m̂ / (√v̂ + ε); the state is the moments ``{"m", "v"}`` (zeros at init)."""
    rate = _rate(lr)

    def init(params: Tree) -> Tree:
        return {"m": T.zeros_like(params), "v": T.zeros_like(params)}

    def update(grads: Tree, state: Tree, step) -> tuple[Tree, Tree]:
        m = tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, state["m"], grads)
        v = tree_map(lambda v_, g: b2 * v_ + (1 - b2) * mx.square(g), state["v"], grads)
        c1, c2 = 1 - b1 ** (step + 1), 1 - b2 ** (step + 1)
        # max(v̂, 1e-30): the same value, but a zero second moment (a dead unit) has a finite derivative,
        # so second-order MAML through an inner Adam gives no NaN (d√v/dv = ∞ at 0)
        updates = _scaled(rate(step), (m, v), lambda a, m_, v_: a * (m_ / c1) / (mx.sqrt(mx.maximum(v_ / c2, 1e-30)) + eps))
        return updates, {"m": m, "v": v}

    return Optimizer(init, update, _logged(rate))


def masked(opt: Optimizer, predicate: PathPredicate | None) -> Optimizer:
    """``opt`` on the leaves whose paths match ``predicate``; the others get zero gradients and never move."""
    if predicate is None:
        return opt

    def zero_outside(tree: Tree) -> Tree:
        return tree_map_with_path(lambda path, x: x if predicate(path) else mx.zeros_like(x), tree)

    def update(grads: Tree, state: Tree, step) -> tuple[Tree, Tree]:
        updates, state = opt.update(zero_outside(grads), state, step)
        return zero_outside(updates), state

    return Optimizer(opt.init, update, opt.learning_rate)


def make(name: str, lr: LearningRate, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Optimizer:
    """The optimizer called ``name`` (one of ``OPTIMIZERS``) at learning rate ``lr``."""
    if name == "sgd":
        return sgd(lr)
    if name == "adam":
        return adam(lr, *betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")


def apply_updates(params: Tree, updates: Tree) -> Tree:
    """θ − updates."""
    return T.sub(params, updates)


def linear_schedule(start: float, end: float | None, total: int | None) -> Schedule:
    """α(t) = start + (end − start)·min(t/total, 1), as Nichol et al. anneal the meta step size; constant if end is None."""
    if total is not None and total < 0:  # the rate would move away from end, not towards it
        raise ValueError(f"linear_schedule: total = {total} steps; give a positive count (or 0/None: constant)")
    if end is None or not total:
        return lambda t: mx.array(start, dtype=mx.float32)
    return lambda t: start + (end - start) * mx.minimum(mx.array(t).astype(mx.float32) / total, 1.0)
