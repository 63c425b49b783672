"""Task2Vec (Achille et al. 2019, "Task2Vec: Task Embedding for Meta-Learning").

A task's embedding is the diagonal of the Fisher information of a fixed probe network (here the
meta-learned initialization, optionally adapted to the support set first, as Task2Vec trains the
probe's classifier on the task) on the task's examples:

    F = (1/n) Σ_i  ∇_θ ℓ(θ; x_i, y_i) ⊙ ∇_θ ℓ(θ; x_i, y_i)          (empirical Fisher, support labels)

with per-example gradients from ``mx.vmap``. For retrieval, ``log_fisher`` takes the logarithm of
each layer's Fisher over its mean (compared by cosine after standardising, ``select``): the raw
diagonal spans orders of magnitude and one layer dominates any distance on it.

    e_l = log(F_l + ε) − log(mean(F_l) + ε)          for each parameter leaf l

Empirical (label-dependent) Fisher rather than the model's predictive one: tasks of different
families can share their input distribution and differ only in the labelling.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
from mlx.utils import tree_flatten

from reptile_fn.tree import Tree

LOG_EPS = 1e-8


def fisher_leaves(apply: Callable, loss: Callable, params: Tree, x: mx.array, y: mx.array,
                  trainable: Callable | None = None) -> list[mx.array]:
    """The diagonal empirical Fisher of each (``trainable``) leaf, flattened, in ``tree_flatten`` order."""

    def grad_one(xi, yi):
        return mx.grad(lambda p: loss(apply(p, xi[None]), yi[None]))(params)

    per_example = mx.vmap(grad_one)(x, y)
    leaves = [g for path, g in tree_flatten(per_example) if trainable is None or trainable(path)]
    return [mx.mean(g * g, axis=0).reshape(-1) for g in leaves]


def log_fisher(leaves: list[mx.array]) -> mx.array:
    """Per-layer normalised log-Fisher: concat over leaves of log(F_l + ε) − log(mean F_l + ε)."""
    return mx.concatenate([mx.log(f + LOG_EPS) - mx.log(mx.mean(f) + LOG_EPS) for f in leaves])
