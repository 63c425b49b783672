"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

    θ̃_i = adapt(θ, support_i)                      (the inner loop on task i)
    θ  ←  θ − outer(mean_i (θ − θ̃_i))               (SGD: θ + β_t · (mean_i θ̃_i − θ))

The outer optimizer gets the direction g = θ − mean_i θ̃_i as a pseudo-gradient: SGD with β
annealed linearly (Nichol et al.), or Adam. Only the trainable subset moves; frozen leaves are
never updated.
"""

from __future__ import annotations

import mlx.core as mx

from reptile_fn import inner as I
from reptile_fn import optim
from reptile_fn import tree as T
from reptile_fn.algorithms.base import LOCAL, MetaStep, Reduce, over_tasks, task_keys
from reptile_fn.inner import Apply, InnerLoop, InnerState, Loss
from reptile_fn.tree import PathPredicate, Tree

DEFAULTS = {"outer_optimizer": "sgd", "outer_lr": 1.0}


def make_step(
    apply: Apply,
    loss: Loss,
    inner: InnerLoop,
    outer: optim.Optimizer | None = None,
    *,
    meta_trainable: PathPredicate | None = None,
    persistent_inner_state: bool = False,
    reduce: Reduce = LOCAL,
    batched: bool = True,
    compiled: bool = True,
) -> MetaStep:
    """Build Reptile's meta-step.

    Args:
      inner: the inner loop every task adapts with (``inner.trainable``: what adapts and moves).
      outer: the optimizer of θ (default: SGD with β = 1, Nichol et al.'s start; anneal it with
        ``optim.sgd(optim.linear_schedule(1.0, 0.0, meta_iterations))``).
      meta_trainable: of what adapts, what the outer loop moves (``None``: all of it); the rest adapts
        from the same starting value in every task and never changes (e.g. a zero head, the "zeroing
        trick" of Kao et al. 2022).
      persistent_inner_state: keep one inner-optimizer state (Adam's moments and step count) in the
        algorithm state, as supervised-reptile's TensorFlow code does (its Adam slots are never reset
        between tasks, and evaluation adapts from them). Every task of a meta-batch starts from it; the
        new state is the mean of the tasks' final states (the reference chains tasks one after another).
      reduce: how this step's tasks make up the meta-batch (the run layer's, for several processes).
      batched / compiled: ``mx.vmap`` over tasks and ``mx.compile`` the step; ``batched=False,
        compiled=False`` is the serial reference implementation.
    """
    outer = optim.masked(outer or optim.sgd(DEFAULTS["outer_lr"]), meta_trainable)

    def init(params: Tree) -> Tree:
        fast, _ = T.partition(params, inner.trainable)
        state = {"iteration": mx.array(0, dtype=mx.int32), "outer": outer.init(fast)}
        if persistent_inner_state:
            state["inner_opt"] = I.optimizer(inner).init(fast)
            state["inner_t"] = mx.array(0, dtype=mx.int32)
        return state

    def adapt_one(shared, support_x, support_y, key):
        params = shared["params"]
        loop = inner._replace(start=InnerState(shared["opt"], shared["t0"])) if persistent_inner_state else inner
        out = I.adapt(loop, apply, loss, params, (support_x, support_y), key)
        losses = out.losses if inner.steps else loss(apply(params, support_x), support_y)[None]
        return T.partition(out.params, inner.trainable)[0], losses, (out.state.opt if persistent_inner_state else {})

    def step(params: Tree, state: Tree, batch, key: mx.array):
        n_tasks = batch.support_x.shape[0]  # this block's share of the meta-batch
        keys = task_keys(key, n_tasks)
        shared = {"params": params}
        if persistent_inner_state:
            shared.update(opt=state["inner_opt"], t0=state["inner_t"])
        adapted, losses, opts = over_tasks(adapt_one, shared, (batch.support_x, batch.support_y, keys),
                                           batched=batched)
        fast, frozen = T.partition(params, inner.trainable)
        # mean_i (θ − θ̃_i): the pseudo-gradient; differences first, so zero inner steps give exactly 0
        direction = T.mean(T.sub(fast, adapted))
        losses = {"support_loss": mx.mean(losses[:, 0]), "adapted_loss": mx.mean(losses[:, -1])}
        # over the blocks: the meta-batch means (one reduction for all of them)
        direction, losses, opt_mean = reduce.mean((direction, losses, T.mean(opts)))
        updates, outer_state = outer.update(direction, state["outer"], state["iteration"])
        new_params = T.combine(optim.apply_updates(fast, updates), frozen)
        metrics = {**losses, "outer_lr": outer.learning_rate(state["iteration"])}
        new_state = {"iteration": state["iteration"] + 1, "outer": outer_state}
        if persistent_inner_state:
            new_state["inner_opt"] = opt_mean
            new_state["inner_t"] = state["inner_t"] + inner.steps * n_tasks * reduce.blocks
        return new_params, new_state, metrics

    def inner_at(state: Tree) -> InnerLoop:
        return inner._replace(start=InnerState(state["inner_opt"], state["inner_t"])) if persistent_inner_state else inner

    return MetaStep(init, mx.compile(step) if compiled else step, inner_at)
