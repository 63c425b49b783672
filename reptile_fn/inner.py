"""The inner loop: adapt parameters to one task's support set. Every algorithm uses it.

SGD:  θ_{t+1} = θ_t − α ⊙ ∇L_support(θ_t)          (α a scalar, or a tree for Meta-SGD)
Adam: θ_{t+1} = θ_t − α · m̂_t / (√v̂_t + ε)         (state starts at zero for every task)

Only the *trainable subset* of the tree (a predicate over dotted paths, see ``tree.match``)
moves; the rest is held fixed and gets no gradient. The loop is unrolled in Python, so it is
differentiable (second-order MAML) and traces into ``mx.vmap`` and ``mx.compile``.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
from mlx.utils import tree_map

from reptile_fn import tree as T
from reptile_fn.tree import PathPredicate, Tree

Apply = Callable[[Tree, mx.array], mx.array]
Loss = Callable[[mx.array, mx.array], mx.array]
INNER_OPTIMIZERS = ("sgd", "adam")


def batch_indices(key: mx.array, n: int, batch_size: int, steps: int) -> mx.array:
    """(steps, batch_size) indices into n examples: epochs of fresh permutations, cut in order.

    As in supervised-reptile's ``_mini_batches``: every example is seen once per epoch.
    """
    epochs = math.ceil(steps * batch_size / n)
    keys = mx.random.split(key, epochs)
    order = mx.concatenate([mx.argsort(mx.random.uniform(shape=(n,), key=keys[e])) for e in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


def support_value_and_grad(apply: Apply, loss: Loss) -> Callable:
    """``(fast, frozen, x, y) -> (loss, ∇_fast loss)`` of ``loss(apply(fast ∪ frozen, x), y)``."""

    def objective(fast_params, frozen_params, xb, yb):
        return loss(apply(T.combine(fast_params, frozen_params), xb), yb)

    return mx.value_and_grad(objective)


def init_opt_state(fast: Tree, optimizer: str) -> Tree:
    """Fresh inner-optimizer state for one task (Adam's moments start at zero)."""
    if optimizer not in INNER_OPTIMIZERS:
        raise ValueError(f"unknown inner optimizer {optimizer!r}; use one of {INNER_OPTIMIZERS}")
    return {"m": T.zeros_like(fast), "v": T.zeros_like(fast)} if optimizer == "adam" else {}


def inner_step(value_and_grad: Callable, fast: Tree, frozen: Tree, opt: Tree, batch: tuple, lr: float | Tree,
               t, *, optimizer: str = "sgd", adam_betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
               first_order: bool = False) -> tuple[Tree, Tree, mx.array]:
    """One inner optimizer step (step number ``t``, from 0) on a (mini-)batch: ``(fast, opt, loss before)``."""
    value, grads = value_and_grad(fast, frozen, *batch)
    if first_order:
        grads = tree_map(mx.stop_gradient, grads)
    if optimizer == "adam":
        b1, b2 = adam_betas
        m = tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, opt["m"], grads)
        v = tree_map(lambda v_, g: b2 * v_ + (1 - b2) * mx.square(g), opt["v"], grads)
        c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
        # max(v, 1e-30): the same value, but a zero second moment (a dead unit) has a finite
        # derivative, so second-order MAML through Adam gives no NaN (d√v/dv = ∞ at 0)
        grads = tree_map(lambda m_, v_: (m_ / c1) / (mx.sqrt(mx.maximum(v_ / c2, 1e-30)) + adam_eps), m, v)
        opt = {"m": m, "v": v}
    if isinstance(lr, dict):
        fast = tree_map(lambda p, g, a: p - a * g, fast, grads, lr)
    else:
        fast = tree_map(lambda p, g: p - lr * g, fast, grads)
    return fast, opt, value


def adapt(
    apply: Apply,
    loss: Loss,
    params: Tree,
    support: tuple[mx.array, mx.array],
    *,
    lr: float | Tree,
    steps: int,
    optimizer: str = "sgd",
    trainable: PathPredicate | None = None,
    inner_batch_size: int | None = None,
    key: mx.array | None = None,
    first_order: bool = False,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    observe: Callable[[Tree], object] | None = None,
    opt_state: Tree | None = None,
    t0=0,
    return_opt_state: bool = False,
):
    """Run ``steps`` optimizer steps of ``loss(apply(params, x), y)`` on the support set.

    Args:
      lr: inner learning rate α; a tree shaped like the trainable subset gives per-parameter rates.
      trainable: which leaves adapt (``None``: all). Frozen leaves are returned unchanged.
      inner_batch_size: examples per step (``None``: the whole support set); needs ``key``.
      first_order: treat inner gradients as constants (FOMAML); the result is then not
        differentiated through the gradient computation.
      observe: if given, ``observe(params_t)`` is recorded for t = 0..steps (e.g. query metrics).
      opt_state / t0: start the inner optimizer from this state at step count ``t0`` (Adam's bias
        correction) instead of fresh; supervised-reptile's TensorFlow code keeps one Adam state
        across all tasks (``reptile.make_step(persistent_inner_state=True)``).
      return_opt_state: also return the final optimizer state (last in the tuple).

    Returns:
      ``(params, losses)``: adapted tree and the support loss before each step, shape (steps,);
      with ``observe``, ``(params, losses, observed)`` where observed stacks the t = 0..steps values;
      with ``return_opt_state``, the optimizer state is appended.
    """
    x, y = support
    fast, frozen = T.partition(params, trainable)
    idx = minibatch_indices(key, x.shape[0], inner_batch_size, steps)
    value_and_grad = support_value_and_grad(apply, loss)
    opt = init_opt_state(fast, optimizer) if opt_state is None else opt_state
    kw = dict(optimizer=optimizer, adam_betas=adam_betas, adam_eps=adam_eps, first_order=first_order)

    losses, observed = [], []
    for t in range(steps):
        if observe is not None:
            observed.append(observe(T.combine(fast, frozen)))
        batch = (x, y) if idx is None else (x[idx[t]], y[idx[t]])
        fast, opt, value = inner_step(value_and_grad, fast, frozen, opt, batch, lr, t0 + t, **kw)
        losses.append(value)

    out = T.combine(fast, frozen)
    loss_trace = mx.stack(losses) if losses else mx.zeros((0,))
    result: tuple = (out, loss_trace)
    if observe is not None:
        observed.append(observe(out))
        result += (tree_map(lambda *xs: mx.stack(xs), observed[0], *observed[1:]),)
    return result + (opt,) if return_opt_state else result


def minibatch_indices(key: mx.array | None, n: int, inner_batch_size: int | None, steps: int) -> mx.array | None:
    """The (steps, batch) support indices of ``adapt``'s mini-batches, or None for full-batch steps."""
    if inner_batch_size is None or inner_batch_size >= n or steps == 0:
        return None
    if key is None:
        raise ValueError("adapt: inner_batch_size needs a PRNG key")
    return batch_indices(key, n, inner_batch_size, steps)
