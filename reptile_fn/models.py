"""Models as ``(init, apply)`` pairs over plain parameter trees, in the style of ``stax``.

``init(key) -> params`` draws a fresh tree from an explicit PRNG key; ``apply(params, x) -> y`` is
a pure function. Parameter names: ``layer0 … layer{depth-1}`` for hidden layers, ``head`` for the
output layer, each ``{"w": (in, out), "b": (out,)}``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import mlx.core as mx

from reptile_fn.tree import Tree

ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "relu": lambda x: mx.maximum(x, 0),
    "tanh": mx.tanh,
    "gelu": lambda x: x * mx.sigmoid(1.702 * x),  # the sigmoid approximation, as in mlx.nn.gelu_fast_approx
    "silu": lambda x: x * mx.sigmoid(x),
    "sigmoid": mx.sigmoid,
}


class Model(NamedTuple):
    """A model: ``init(key) -> params`` and ``apply(params, x) -> y``."""

    init: Callable[[mx.array], Tree]
    apply: Callable[[Tree, mx.array], mx.array]


def dense_init(key: mx.array, in_dim: int, out_dim: int) -> Tree:
    """PyTorch's ``nn.Linear`` default: w, b ~ U[−1/√in, 1/√in]."""
    kw, kb = mx.random.split(key)
    bound = 1.0 / math.sqrt(in_dim)
    return {
        "w": mx.random.uniform(-bound, bound, (in_dim, out_dim), key=kw),
        "b": mx.random.uniform(-bound, bound, (out_dim,), key=kb),
    }


def dense(params: Tree, x: mx.array) -> mx.array:
    return x @ params["w"] + params["b"]


def mlp(in_dim: int, out_dim: int, *, hidden: int = 40, depth: int = 2, activation: str = "relu") -> Model:
    """A multilayer perceptron: ``depth`` hidden layers of width ``hidden``, then a linear head."""
    act = ACTIVATIONS[activation]
    dims = [in_dim] + [hidden] * depth

    def init(key: mx.array) -> Tree:
        keys = mx.random.split(key, depth + 1)
        params = {f"layer{i}": dense_init(keys[i], dims[i], dims[i + 1]) for i in range(depth)}
        params["head"] = dense_init(keys[depth], dims[-1], out_dim)
        return params

    def apply(params: Tree, x: mx.array) -> mx.array:
        for i in range(depth):
            x = act(dense(params[f"layer{i}"], x))
        return dense(params["head"], x)

    return Model(init, apply)
