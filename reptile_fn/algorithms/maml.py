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
holds it and ``MetaStep.inner(state)`` hands it to evaluation as the loop's ``lr``.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_map

from reptile_fn import inner as I
from reptile_fn import optim
from reptile_fn import tree as T
from reptile_fn.algorithms.base import LOCAL, MetaStep, Reduce, over_tasks, task_keys
from reptile_fn.inner import Apply, InnerLoop, Loss
from reptile_fn.models import HEAD
from reptile_fn.tree import PathPredicate, Tree

DEFAULTS = {"outer_optimizer": "adam", "outer_lr": 1e-3}


def make_step(
    apply: Apply,
    loss: Loss,
    inner: InnerLoop,
    outer: optim.Optimizer | None = None,
    *,
    meta_trainable: PathPredicate | None = None,
    first_order: bool = False,
    learn_inner_lr: bool = False,
    reduce: Reduce = LOCAL,
    batched: bool = True,
    compiled: bool = True,
) -> MetaStep:
    """Build a MAML-family meta-step (see the module docstring for the update).

    Args:
      inner: the inner loop every task adapts with (``inner.trainable``: what adapts; ANIL: the head).
      outer: the optimizer of the meta-parameters (default: Adam at 1e-3).
      meta_trainable: the parameters the outer loop learns (``None``: all; PEFT: the adapter and head).
      first_order: FOMAML (drop the second-order terms).
      learn_inner_lr: Meta-SGD: α starts at ``inner.lr`` for every parameter and is meta-learned.
      reduce: how this step's tasks make up the meta-batch (the run layer's, for several processes).
    """
    outer = outer or optim.adam(DEFAULTS["outer_lr"])
    inner = inner._replace(first_order=inner.first_order or first_order)
    trainable = inner.trainable

    def meta_params(params: Tree, state: Tree) -> Tree:
        learned = T.partition(params, meta_trainable)[0]
        return {"params": learned, "inner_lr": state["inner_lr"]} if learn_inner_lr else {"params": learned}

    def init(params: Tree) -> Tree:
        state: Tree = {"iteration": mx.array(0, dtype=mx.int32)}
        if learn_inner_lr:
            fast, _ = T.partition(params, trainable)
            state["inner_lr"] = tree_map(lambda p: mx.full(p.shape, inner.lr, dtype=p.dtype), fast)
        state["outer"] = outer.init(meta_params(params, state))
        return state

    mask_frozen = trainable is not None and not inner.first_order  # see _task_loop

    def task_loss(shared: Tree, sx, sy, qx, qy, key):
        mp = shared["meta"]
        params = T.combine(mp["params"], shared["fixed"])
        lr = mp["inner_lr"] if learn_inner_lr else inner.lr
        out = I.adapt(_task_loop(inner, lr, params) if mask_frozen else inner._replace(lr=lr), apply, loss, params,
                      (sx, sy), key)
        return loss(apply(out.params, qx), qy), out.losses

    def objective(mp: Tree, fixed: Tree, batch, keys):
        query_losses, support_losses = over_tasks(
            task_loss, {"meta": mp, "fixed": fixed},
            (batch.support_x, batch.support_y, batch.query_x, batch.query_y, keys), batched=batched)
        return mx.mean(query_losses), support_losses

    value_and_grad = mx.value_and_grad(objective)

    def step(params: Tree, state: Tree, batch, key: mx.array):
        keys = task_keys(key, batch.support_x.shape[0])
        mp = meta_params(params, state)
        fixed = T.partition(params, meta_trainable)[1]  # not meta-learned: no gradient, never updated
        (query_loss, support_losses), grads = value_and_grad(mp, fixed, batch, keys)
        # this block's tasks' means → the meta-batch means (every block holds as many tasks)
        support_loss = mx.mean(support_losses[:, 0]) if inner.steps else mx.array(0.0)
        grads, query_loss, support_loss = reduce.mean((grads, query_loss, support_loss))
        updates, outer_state = outer.update(grads, state["outer"], state["iteration"])
        new = optim.apply_updates(mp, updates)
        new_state = {"iteration": state["iteration"] + 1, "outer": outer_state}
        if learn_inner_lr:
            new_state["inner_lr"] = new["inner_lr"]
        metrics = {"query_loss": query_loss, "outer_lr": outer.learning_rate(state["iteration"])}
        if inner.steps:
            metrics["support_loss"] = support_loss
        return T.combine(new["params"], fixed), new_state, metrics

    def inner_at(state: Tree) -> InnerLoop:
        return inner._replace(lr=state["inner_lr"]) if learn_inner_lr else inner

    return MetaStep(init, mx.compile(step) if compiled else step, inner_at)


def _task_loop(inner: InnerLoop, lr, params: Tree) -> InnerLoop:
    """The loop of a second-order task whose inner loop adapts part of the tree.

    MLX 0.32.4's compile fails ("unordered_map::at") on a second-order gradient through 3+ inner steps
    that adapt only part of the tree. Work around it: adapt every leaf, with a learning rate of exactly
    0 outside the trainable subset (p − 0·g = p), which gives the same values and meta-gradients at the
    cost of the frozen leaves' inner gradients.
    """
    fast, frozen = T.partition(params, inner.trainable)
    if not T.paths(fast) and inner.steps:  # every rate would be 0: nothing adapts, and nothing would say so
        raise ValueError(f"the inner loop's trainable matches no parameter, so nothing would adapt; the tree's paths "
                         f"are {', '.join(T.paths(params)[:8])} (tree.match(['head.*']) selects the head)")
    fast_lr = lr if isinstance(lr, dict) else tree_map(lambda p: mx.full(p.shape, lr, dtype=p.dtype), fast)
    return inner._replace(lr=T.combine(fast_lr, T.zeros_like(frozen)), trainable=None)


def fomaml(apply: Apply, loss: Loss, inner: InnerLoop, outer: optim.Optimizer | None = None, **kw) -> MetaStep:
    """First-order MAML."""
    return make_step(apply, loss, inner, outer, first_order=True, **kw)


def metasgd(apply: Apply, loss: Loss, inner: InnerLoop, outer: optim.Optimizer | None = None, **kw) -> MetaStep:
    """Meta-SGD: per-parameter inner learning rates, meta-learned."""
    return make_step(apply, loss, inner, outer, learn_inner_lr=True, **kw)


def anil(apply: Apply, loss: Loss, inner: InnerLoop, outer: optim.Optimizer | None = None, **kw) -> MetaStep:
    """ANIL: only the head (``head.*``, or the loop's own ``trainable`` if set) adapts in the inner loop."""
    if inner.trainable is None:
        inner = inner._replace(trainable=T.match(HEAD))
    return make_step(apply, loss, inner, outer, **kw)
