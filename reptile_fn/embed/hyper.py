"""A hypernetwork (Ha et al. 2016, "HyperNetworks") from a task embedding to an initialization.

A small MLP h_φ maps a standardised task embedding z to a delta on the meta-learned init θ:

    θ₀(z) = θ + unflatten(h_φ(z)),     h_φ(z) = W₂ relu(W₁ z + b₁) + b₂,   W₂ = 0, b₂ = 0 at init

so an untrained hypernetwork returns θ exactly. It is meta-trained on training tasks with a
first-order objective: θ₀(z) is adapted on the support set by K SGD steps whose gradients are held
constant (FOMAML), so ∂θ_K/∂θ₀ = I and

    ∇_φ L_query(θ_K) = (∂θ₀/∂φ)ᵀ ∇_θ L_query(θ_K),

averaged over a batch of tasks (``mx.vmap``), with Adam on φ, in one ``mx.compile``d step.
The caller standardises embeddings (``embed.select.standardize`` with training-pool statistics).
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from reptile_fn import optim
from reptile_fn import tree as T
from reptile_fn.episode import Episode
from reptile_fn.inner import InnerLoop, adapt
from reptile_fn.tree import Tree


def init(key: mx.array, embed_dim: int, like: Tree, *, hidden: int = 64) -> Tree:
    """Hypernetwork parameters for embeddings of size ``embed_dim`` and target trees shaped like ``like``.

    The output layer is zero, so ``generate`` starts at the meta-learned init.
    """
    out_dim = sum(v.size for _, v in tree_flatten(like))
    bound = 1 / math.sqrt(embed_dim)
    return {"hidden": {"w": mx.random.uniform(-bound, bound, (embed_dim, hidden), key=key), "b": mx.zeros((hidden,))},
            "out": {"w": mx.zeros((hidden, out_dim)), "b": mx.zeros((out_dim,))}}


def delta(hyper: Tree, z: mx.array) -> mx.array:
    """h_φ(z): the flat parameter delta for one standardised embedding z (d,)."""
    h = mx.maximum(z @ hyper["hidden"]["w"] + hyper["hidden"]["b"], 0.0)
    return h @ hyper["out"]["w"] + hyper["out"]["b"]


def unflatten_like(flat: mx.array, like: Tree) -> Tree:
    """Cut a flat vector into a tree shaped like ``like`` (``tree_flatten`` order)."""
    leaves, start = [], 0
    for path, v in tree_flatten(like):
        leaves.append((path, flat[start:start + v.size].reshape(v.shape).astype(v.dtype)))
        start += v.size
    return tree_unflatten(leaves)


def generate(hyper: Tree, meta_params: Tree, z: mx.array) -> Tree:
    """θ₀(z) = θ + h_φ(z) for one standardised embedding z (d,)."""
    return T.add(meta_params, unflatten_like(delta(hyper, z), meta_params))


def objective(apply: Callable, loss: Callable, meta_params: Tree, *, inner_lr: float, steps: int) -> Callable:
    """``(hyper, z (tasks, d), episodes) -> mean query loss`` after first-order adaptation of θ₀(z)."""

    loop = InnerLoop(lr=inner_lr, steps=steps, first_order=True)

    def one(hyper, z, sx, sy, qx, qy):
        start = generate(hyper, meta_params, z)
        return loss(apply(adapt(loop, apply, loss, start, (sx, sy)).params, qx), qy)

    def total(hyper, z, episodes: Episode):
        return mx.vmap(one, in_axes=(None, 0, 0, 0, 0, 0))(hyper, z, *episodes).mean()

    return total


def make_step(apply: Callable, loss: Callable, meta_params: Tree, *, inner_lr: float, steps: int,
              lr: float = 1e-3) -> tuple[Callable, Callable]:
    """``(init_state, step)``: ``step(hyper, state, z, episodes) -> (hyper, state, loss)``, compiled, Adam on φ."""
    adam = optim.adam(lr)
    value_and_grad = mx.value_and_grad(objective(apply, loss, meta_params, inner_lr=inner_lr, steps=steps))

    def init_state(hyper: Tree) -> Tree:
        return {"adam": adam.init(hyper), "step": mx.array(0, dtype=mx.int32)}

    @mx.compile
    def step(hyper, state, z, episodes):
        value, grads = value_and_grad(hyper, z, episodes)
        updates, moments = adam.update(grads, state["adam"], state["step"])
        return optim.apply_updates(hyper, updates), {"adam": moments, "step": state["step"] + 1}, value

    return init_state, step
