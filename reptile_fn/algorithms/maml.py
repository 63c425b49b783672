"""The MAML family on the shared inner loop: MAML, first-order MAML, Meta-SGD and ANIL.

For a task i with support set S_i and query set Q_i,

    θ̃_i(θ, α) = adapt(θ, S_i; lr = α)                          (the inner loop, ``inner.adapt``)
    L(θ, α)   = mean_i  L_Qi(θ̃_i(θ, α))                         (post-adaptation query loss)
    (θ, α)   ← outer_optimizer((θ, α), ∇_(θ, α) L)

- MAML (Finn et al. 2017): the gradient flows through the inner loop (second order).
- FOMAML: inner gradients are constants (``stop_gradient``), so ∇_θ L = mean_i ∇L_Qi(θ̃_i).
- Meta-SGD (Li et al. 2017): α is a tree of per-parameter learning rates, meta-learned with θ;
  the inner step is θ − α ⊙ ∇L_S.
- ANIL (Raghu et al. 2020): only the head adapts in the inner loop (the trainable subset); the
  outer loop still meta-learns every parameter.

The learned α of Meta-SGD lives in the algorithm state (``state["inner_lr"]``), so a checkpoint
holds it and ``MetaStep.inner_lr(state)`` hands it to evaluation.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_map

from reptile_fn import distributed, optim
from reptile_fn import tree as T
from reptile_fn.algorithms.base import MetaStep, over_tasks
from reptile_fn.inner import Apply, Loss, adapt
from reptile_fn.tree import PathPredicate, Tree

DEFAULTS = {"outer_optimizer": "adam", "outer_lr": 1e-3}
ANIL_TRAINABLE = ("head.*",)


def make_step(
    apply: Apply,
    loss: Loss,
    *,
    inner_lr: float,
    inner_steps: int,
    outer_lr: float = DEFAULTS["outer_lr"],
    outer_lr_final: float | None = None,
    meta_iterations: int | None = None,
    inner_optimizer: str = "sgd",
    inner_batch_size: int | None = None,
    inner_adam_betas: tuple[float, float] = (0.9, 0.999),
    outer_optimizer: str = DEFAULTS["outer_optimizer"],
    trainable: PathPredicate | None = None,
    meta_trainable: PathPredicate | None = None,
    first_order: bool = False,
    learn_inner_lr: bool = False,
    group=None,
    batched: bool = True,
    compiled: bool = True,
) -> MetaStep:
    """Build a MAML-family meta-step (see the module docstring for the update).

    Args:
      trainable: the parameters that adapt in the inner loop (ANIL: the head).
      meta_trainable: the parameters the outer loop learns (``None``: all; PEFT: the adapter and head).
      first_order: FOMAML (drop the second-order terms).
      learn_inner_lr: Meta-SGD: α starts at ``inner_lr`` for every parameter and is meta-learned.
      group: an ``mx.distributed`` group whose processes each hold a block of the meta-batch; the
        meta-gradient and metrics are averaged over them (``reptile_fn.distributed``).
    """
    outer = optim.make(outer_optimizer)
    schedule = optim.linear_schedule(outer_lr, outer_lr_final, meta_iterations)

    def meta_params(params: Tree, state: Tree) -> Tree:
        learned = T.partition(params, meta_trainable)[0]
        return {"params": learned, "inner_lr": state["inner_lr"]} if learn_inner_lr else {"params": learned}

    def init(params: Tree) -> Tree:
        state: Tree = {"iteration": mx.array(0, dtype=mx.int32)}
        if learn_inner_lr:
            fast, _ = T.partition(params, trainable)
            state["inner_lr"] = tree_map(lambda p: mx.full(p.shape, inner_lr, dtype=p.dtype), fast)
        state["outer"] = outer.init(meta_params(params, state))
        return state

    # MLX 0.32.4's compile fails ("unordered_map::at") on a second-order gradient through 3+ inner
    # steps that adapt only part of the tree. Work around it: adapt every leaf, with a learning
    # rate of exactly 0 outside the trainable subset (p − 0·g = p), which gives the same values and
    # meta-gradients at the cost of the frozen leaves' inner gradients.
    mask_frozen = trainable is not None and not first_order

    def inner_lr_tree(lr, params: Tree):
        if not mask_frozen:
            return lr
        fast, frozen = T.partition(params, trainable)
        fast_lr = lr if isinstance(lr, dict) else tree_map(lambda p: mx.full(p.shape, lr, dtype=p.dtype), fast)
        return T.combine(fast_lr, T.zeros_like(frozen))

    def task_loss(shared: Tree, sx, sy, qx, qy, key):
        mp = shared["meta"]
        params = T.combine(mp["params"], shared["fixed"])
        lr = mp["inner_lr"] if learn_inner_lr else inner_lr
        adapted, support_losses = adapt(
            apply, loss, params, (sx, sy), lr=inner_lr_tree(lr, params), steps=inner_steps,
            optimizer=inner_optimizer, trainable=None if mask_frozen else trainable,
            inner_batch_size=inner_batch_size, key=key, first_order=first_order, adam_betas=inner_adam_betas,
        )
        return loss(apply(adapted, qx), qy), support_losses

    def objective(mp: Tree, fixed: Tree, batch, keys):
        query_losses, support_losses = over_tasks(
            task_loss, {"meta": mp, "fixed": fixed},
            (batch.support_x, batch.support_y, batch.query_x, batch.query_y, keys), batched=batched)
        return mx.mean(query_losses), support_losses

    value_and_grad = mx.value_and_grad(objective)

    def step(params: Tree, state: Tree, batch, key: mx.array):
        keys = distributed.task_keys(key, batch.support_x.shape[0], group)
        mp = meta_params(params, state)
        fixed = T.partition(params, meta_trainable)[1]  # not meta-learned: no gradient, never updated
        (query_loss, support_losses), grads = value_and_grad(mp, fixed, batch, keys)
        # this process's tasks' means → the meta-batch means (every process holds as many tasks)
        support_loss = mx.mean(support_losses[:, 0]) if inner_steps else mx.array(0.0)
        grads, query_loss, support_loss = distributed.mean((grads, query_loss, support_loss), group)
        lr = schedule(state["iteration"])
        updates, outer_state = outer.update(grads, state["outer"], lr)
        new = T.sub(mp, updates)
        new_state = {"iteration": state["iteration"] + 1, "outer": outer_state}
        if learn_inner_lr:
            new_state["inner_lr"] = new["inner_lr"]
        metrics = {"query_loss": query_loss, "outer_lr": lr}
        if inner_steps:
            metrics["support_loss"] = support_loss
        return T.combine(new["params"], fixed), new_state, metrics

    def current_inner_lr(state: Tree):
        return state["inner_lr"] if learn_inner_lr else inner_lr

    return MetaStep(init, mx.compile(step) if compiled else step, current_inner_lr)


def fomaml(apply: Apply, loss: Loss, **hyper) -> MetaStep:
    """First-order MAML."""
    return make_step(apply, loss, first_order=True, **hyper)


def metasgd(apply: Apply, loss: Loss, **hyper) -> MetaStep:
    """Meta-SGD: per-parameter inner learning rates, meta-learned."""
    return make_step(apply, loss, learn_inner_lr=True, **hyper)


def anil(apply: Apply, loss: Loss, *, trainable: PathPredicate | None = None, **hyper) -> MetaStep:
    """ANIL: only the head (``head.*``, or the given subset) adapts in the inner loop."""
    return make_step(apply, loss, trainable=trainable or T.match(ANIL_TRAINABLE), **hyper)
