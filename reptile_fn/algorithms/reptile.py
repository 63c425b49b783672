"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

    θ̃_i = adapt(θ, support_i)                      (k inner steps on task i)
    θ  ←  θ + β_t · (mean_i θ̃_i − θ)               (β_t annealed linearly from outer_lr to outer_lr_final)

With ``outer_optimizer="adam"`` the direction g = θ − mean_i θ̃_i is fed to Adam as a pseudo-gradient.
Only the trainable subset moves; frozen leaves are never updated.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_map_with_path

from reptile_fn import distributed, optim
from reptile_fn import tree as T
from reptile_fn.algorithms.base import MetaStep, over_tasks
from reptile_fn.inner import Apply, Loss, adapt, init_opt_state
from reptile_fn.tree import PathPredicate, Tree

DEFAULTS = {"outer_optimizer": "sgd", "outer_lr": 1.0}


def make_step(
    apply: Apply,
    loss: Loss,
    *,
    inner_lr: float,
    inner_steps: int,
    outer_lr: float,
    outer_lr_final: float | None = None,
    meta_iterations: int | None = None,
    inner_optimizer: str = "sgd",
    inner_batch_size: int | None = None,
    inner_adam_betas: tuple[float, float] = (0.9, 0.999),
    outer_optimizer: str = "sgd",
    trainable: PathPredicate | None = None,
    meta_trainable: PathPredicate | None = None,
    persistent_inner_state: bool = False,
    group=None,
    batched: bool = True,
    compiled: bool = True,
) -> MetaStep:
    """Build Reptile's meta-step.

    Args:
      outer_lr: β, the meta step size (Nichol et al. use 1.0 annealed to 0 for Omniglot).
      outer_lr_final / meta_iterations: anneal β linearly to this value over that many steps.
      meta_trainable: of what adapts (``trainable``), what the outer loop moves (``None``: all of it); the
        rest adapts from the same starting value in every task and never changes (e.g. a zero head, the
        "zeroing trick" of Kao et al. 2022).
      persistent_inner_state: keep one inner-optimizer state (Adam's moments and step count) in the
        algorithm state, as supervised-reptile's TensorFlow code does (its Adam slots are never reset
        between tasks, and evaluation adapts from them). Every task of a meta-batch starts from it; the
        new state is the mean of the tasks' final states (the reference chains tasks one after another).
      group: an ``mx.distributed`` group whose processes each hold a block of the meta-batch; the
        direction, metrics and inner state are averaged over them (``reptile_fn.distributed``).
      batched / compiled: ``mx.vmap`` over tasks and ``mx.compile`` the step; ``batched=False,
        compiled=False`` is the serial reference implementation.
    """
    outer = optim.make(outer_optimizer)
    schedule = optim.linear_schedule(outer_lr, outer_lr_final, meta_iterations)

    def init(params: Tree) -> Tree:
        fast, _ = T.partition(params, trainable)
        state = {"iteration": mx.array(0, dtype=mx.int32), "outer": outer.init(fast)}
        if persistent_inner_state:
            state["inner_opt"] = init_opt_state(fast, inner_optimizer)
            state["inner_t"] = mx.array(0, dtype=mx.int32)
        return state

    def adapt_one(shared, support_x, support_y, key):
        params = shared["params"]
        carry = dict(opt_state=shared["opt"], t0=shared["t0"], return_opt_state=True) if persistent_inner_state else {}
        adapted, losses, *opt = adapt(
            apply, loss, params, (support_x, support_y), lr=inner_lr, steps=inner_steps,
            optimizer=inner_optimizer, trainable=trainable, inner_batch_size=inner_batch_size,
            key=key, adam_betas=inner_adam_betas, **carry,
        )
        if inner_steps == 0:
            losses = loss(apply(params, support_x), support_y)[None]
        return T.partition(adapted, trainable)[0], losses, (opt[0] if opt else {})

    def step(params: Tree, state: Tree, batch, key: mx.array):
        n_tasks = batch.support_x.shape[0]  # this process's share of the meta-batch
        n_global = n_tasks * (group.size() if group is not None else 1)
        keys = distributed.task_keys(key, n_tasks, group)
        shared = {"params": params}
        if persistent_inner_state:
            shared.update(opt=state["inner_opt"], t0=state["inner_t"])
        adapted, losses, opts = over_tasks(adapt_one, shared, (batch.support_x, batch.support_y, keys),
                                           batched=batched)
        fast, frozen = T.partition(params, trainable)
        # mean_i (θ − θ̃_i): the pseudo-gradient; differences first, so zero inner steps give exactly 0
        direction = T.mean(T.sub(fast, adapted))
        if meta_trainable is not None:  # adapted, not meta-learned: no outer step
            direction = tree_map_with_path(lambda path, d: d if meta_trainable(path) else mx.zeros_like(d), direction)
        losses = {"support_loss": mx.mean(losses[:, 0]), "adapted_loss": mx.mean(losses[:, -1])}
        # over processes: the meta-batch means (one collective for all of them)
        direction, losses, opt_mean = distributed.mean((direction, losses, T.mean(opts)), group)
        lr = schedule(state["iteration"])
        updates, outer_state = outer.update(direction, state["outer"], lr)
        new_params = T.combine(T.sub(fast, updates), frozen)
        metrics = {**losses, "outer_lr": lr}
        new_state = {"iteration": state["iteration"] + 1, "outer": outer_state}
        if persistent_inner_state:
            new_state["inner_opt"] = opt_mean
            new_state["inner_t"] = state["inner_t"] + inner_steps * n_global
        return new_params, new_state, metrics

    def inner_opt(state: Tree):
        return (state["inner_opt"], state["inner_t"]) if persistent_inner_state else None

    return MetaStep(init, mx.compile(step) if compiled else step, lambda state: inner_lr, inner_opt)
