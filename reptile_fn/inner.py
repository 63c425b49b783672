"""The inner loop: adapt parameters to one task's support set. Training, evaluation and every
algorithm run this loop (``adapt``, or ``init_state`` + ``step`` one step at a time), never a copy.

SGD:  θ_{t+1} = θ_t − α ⊙ ∇L_support(θ_t)          (α a scalar, or a tree for Meta-SGD)
Adam: θ_{t+1} = θ_t − α · m̂_t / (√v̂_t + ε)         (state starts at zero for every task, or from ``start``)

Only the *trainable subset* of the tree (a predicate over dotted paths, see ``tree.match``)
moves; the rest is held fixed and gets no gradient. ``adapt`` unrolls the loop in Python, so it
is differentiable (second-order MAML) and traces into ``mx.vmap`` and ``mx.compile``. The
optimizers are ``reptile_fn.optim``'s, the same as the outer loop's.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Callable, NamedTuple

import mlx.core as mx
from mlx.utils import tree_map

from reptile_fn import optim
from reptile_fn import tree as T
from reptile_fn.tree import PathPredicate, Tree

Apply = Callable[[Tree, mx.array], mx.array]
Loss = Callable[[mx.array, mx.array], mx.array]
INNER_OPTIMIZERS = optim.OPTIMIZERS


class InnerState(NamedTuple):
    """The inner optimizer's state (Adam's moments; ``{}`` for SGD) and its step count ``t``."""

    opt: Tree
    t: int | mx.array = 0


class InnerLoop(NamedTuple):
    """How a task adapts. One value, handed to ``adapt``, every ``make_step`` and the evaluation.

    Attributes:
      lr: inner learning rate α; a tree shaped like the trainable subset gives per-parameter rates.
      steps: optimizer steps on the support set.
      optimizer: ``"sgd"`` or ``"adam"``.
      batch_size: support examples per step (``None``: the whole support set); needs a key.
      trainable: which leaves adapt (``None``: all). Frozen leaves are returned unchanged.
      first_order: treat inner gradients as constants (FOMAML): the result is not differentiated
        through the gradient computation.
      adam_betas, adam_eps: Adam's β1, β2 and ε.
      start: an ``InnerState`` to start the optimizer from instead of a fresh one: the inner Adam
        state supervised-reptile keeps across tasks (``MetaStep.inner(state)`` fills it in).
      head_init: ``(params, support) -> params`` applied before the first step of every task, e.g. a head
        rebuilt from the support set (``heads.prototype_head``); what it sets must be trainable.
    """

    lr: float | Tree = 0.01
    steps: int = 5
    optimizer: str = "sgd"
    batch_size: int | None = None
    trainable: PathPredicate | None = None
    first_order: bool = False
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    start: InnerState | None = None
    head_init: Callable[[Tree, tuple], Tree] | None = None


class Adapted(NamedTuple):
    """What ``adapt`` returns, whatever was asked of it.

    ``params``: the adapted tree; ``losses``: the support loss before each step, shape (steps,);
    ``observed``: ``observe(params_t)`` stacked for t = 0..steps (None without ``observe``);
    ``state``: the final ``InnerState``.
    """

    params: Tree
    losses: mx.array
    observed: object
    state: InnerState


def optimizer(loop: InnerLoop) -> optim.Optimizer:
    """The ``optim`` optimizer the loop steps with."""
    if loop.optimizer not in INNER_OPTIMIZERS:
        raise ValueError(f"unknown inner optimizer {loop.optimizer!r}; use one of {INNER_OPTIMIZERS}")
    return optim.make(loop.optimizer, loop.lr, betas=loop.adam_betas, eps=loop.adam_eps)


def init_state(loop: InnerLoop, fast: Tree) -> InnerState:
    """The state a task's adaptation starts from: ``loop.start``, else fresh (Adam's moments at zero)."""
    return loop.start if loop.start is not None else InnerState(optimizer(loop).init(fast), 0)


def support_value_and_grad(apply: Apply, loss: Loss) -> Callable:
    """``(fast, frozen, x, y) -> (loss, ∇_fast loss)`` of ``loss(apply(fast ∪ frozen, x), y)``."""

    def objective(fast_params, frozen_params, xb, yb):
        return loss(apply(T.combine(fast_params, frozen_params), xb), yb)

    return mx.value_and_grad(objective)


def step(loop: InnerLoop, value_and_grad: Callable, fast: Tree, frozen: Tree, state: InnerState,
         batch: tuple) -> tuple[Tree, InnerState, mx.array]:
    """One optimizer step on a (mini-)batch: ``(fast, state, support loss before the step)``."""
    value, grads = value_and_grad(fast, frozen, *batch)
    if loop.first_order:
        grads = tree_map(mx.stop_gradient, grads)
    updates, opt = optimizer(loop).update(grads, state.opt, state.t)
    return optim.apply_updates(fast, updates), InnerState(opt, state.t + 1), value


def adapt(loop: InnerLoop, apply: Apply, loss: Loss, params: Tree, support: tuple[mx.array, mx.array],
          key: mx.array | None = None, *, observe: Callable[[Tree], object] | None = None,
          settle_every: int | None = None, on_settle: Callable[[int], None] | None = None) -> Adapted:
    """Run ``loop.steps`` optimizer steps of ``loss(apply(params, x), y)`` on the support set
    (after ``loop.head_init``, if any).

    Args:
      key: the mini-batch order (needed when ``loop.batch_size`` is smaller than the support set).
      observe: if given, ``observe(params_t)`` is recorded for t = 0..steps (e.g. query metrics).
      settle_every: for eager callers only (``mx.eval`` cannot run under ``mx.compile`` or ``mx.vmap``): evaluate
        the loop every n steps, so that its lazy graph, and the memory it holds, stays bounded whatever
        ``loop.steps`` is, and a signal is handled between steps; ``on_settle(n)`` is told when n more steps are
        done (progress). The numbers are the same either way.
    """
    x, y = support
    if x.shape[:1] != y.shape[:1]:
        raise ValueError(f"adapt: the support set has {x.shape[:1]} inputs and {y.shape[:1]} targets (shapes {x.shape}, "
                         f"{y.shape}); give one target per input")
    if not isinstance(loop.steps, Integral) or loop.batch_size is not None and not isinstance(loop.batch_size, Integral):
        raise TypeError(f"adapt: steps = {loop.steps!r} and batch_size = {loop.batch_size!r}; give whole numbers")
    if loop.trainable is not None and not callable(loop.trainable):
        raise TypeError(f"adapt: trainable = {loop.trainable!r} is a path predicate; build it from glob patterns with "
                        "reptile_fn.tree.match(['head.*'])")
    if loop.steps < 0 or loop.batch_size is not None and loop.batch_size < 1:
        raise ValueError(f"adapt: steps = {loop.steps} and batch_size = {loop.batch_size}; steps must be >= 0 and "
                         "batch_size >= 1 (or None: the whole support set)")
    if loop.head_init is not None:
        params = loop.head_init(params, support)
    fast, frozen = T.partition(params, loop.trainable)
    if not T.paths(fast) and loop.steps:
        raise ValueError(f"adapt: loop.trainable matches no parameter, so nothing would adapt; the tree's paths are "
                         f"{', '.join(T.paths(params)[:8])} (tree.match(['head.*']) selects the head)")
    idx = minibatch_indices(key, x.shape[0], loop.batch_size, loop.steps)
    value_and_grad = support_value_and_grad(apply, loss)
    state = init_state(loop, fast)
    losses, observed = [], []
    for t in range(loop.steps):
        if observe is not None:
            observed.append(observe(T.combine(fast, frozen)))
        batch = (x, y) if idx is None else (x[idx[t]], y[idx[t]])
        fast, state, value = step(loop, value_and_grad, fast, frozen, state, batch)
        losses.append(value)
        if settle_every and ((t + 1) % settle_every == 0 or t + 1 == loop.steps):
            mx.eval(fast, state, losses, observed)
            if on_settle is not None:
                on_settle((t % settle_every) + 1)
    out = T.combine(fast, frozen)
    if observe is not None:
        observed.append(observe(out))
        observed = tree_map(lambda *xs: mx.stack(xs), observed[0], *observed[1:])
    return Adapted(out, mx.stack(losses) if losses else mx.zeros((0,)), observed if observe is not None else None,
                   state)


def batch_indices(key: mx.array, n: int, batch_size: int, steps: int) -> mx.array:
    """(steps, batch_size) indices into n examples: epochs of fresh permutations, cut in order.

    As in supervised-reptile's ``_mini_batches``: every example is seen once per epoch. Epoch e's key is the
    e-th of a chain of splits, so the first t rows are the same whatever ``steps`` is: the accuracy after t steps
    does not depend on how many steps an evaluation goes on to (``mx.random.split(key, epochs)`` would give other
    keys for every count).
    """
    epochs = math.ceil(steps * batch_size / n)
    perms = []
    for _ in range(epochs):
        key, sub = mx.random.split(key)
        perms.append(mx.argsort(mx.random.uniform(shape=(n,), key=sub)))
    return mx.concatenate(perms)[: steps * batch_size].reshape(steps, batch_size)


def minibatch_indices(key: mx.array | None, n: int, batch_size: int | None, steps: int) -> mx.array | None:
    """The (steps, batch) support indices of ``adapt``'s mini-batches, or None for full-batch steps."""
    if batch_size is None or batch_size >= n or steps == 0:
        return None
    if key is None:
        raise ValueError("adapt: a mini-batch inner loop (batch_size) needs a PRNG key")
    return batch_indices(key, n, batch_size, steps)
