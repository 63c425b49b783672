"""LoRA adapters as their own parameter trees, beside a frozen base tree.

An adapter mirrors the paths of the base weights it targets: for a base leaf ``layer1.w`` it holds
``layer1.w.lora_a`` and ``layer1.w.lora_b`` (and ``layer1.w.lora_e``, a rank mask, with AdaLoRA).
The update to that weight is

    ΔW = scale · A · diag(e) · B        A: (in, r),  B: (r, out),  e ∈ {0, 1}^r (all ones for plain LoRA)

with mlx-lm's conventions: ``lora_a`` ~ U[−1/√in, 1/√in], ``lora_b`` = 0 (so a fresh adapter leaves
the model unchanged), and ``scale`` multiplying the low-rank path. Hugging Face peft writes the
same thing as ``r`` and ``lora_alpha`` with ``scale = lora_alpha / r`` (its ``lora_A`` is our
``lora_a`` transposed, its ``lora_B`` our ``lora_b`` transposed, as it stores weights (out, in)).

Dense weights are (in, out). Convolution weights, MLX's (out, kh, kw, in), are adapted as the
(kh·kw·in, out) matrix their im2col form multiplies by: "in" is kh·kw·in.

``lora_apply(apply)`` turns any model's ``apply(params, x)`` into ``apply(base, adapter, x)`` by
merging W + ΔW inside (the base code is not touched); ``merge`` returns those merged parameters.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from reptile_fn.errors import ConfigError
from reptile_fn import tree as T
from reptile_fn.tree import PathPredicate, Tree

LORA_A, LORA_B, LORA_E = "lora_a", "lora_b", "lora_e"
# The leaves an optimizer moves; the rank mask ``lora_e`` is set by rank allocation, never by gradients.
TRAINABLE = ("*.lora_a", "*.lora_b")


def _predicate(targets: str | Iterable[str] | PathPredicate) -> PathPredicate:
    return targets if callable(targets) else T.match(targets)


def _matrix_dims(shape: tuple[int, ...]) -> tuple[int, int]:
    """(in, out) of the matrix a weight of this shape multiplies by."""
    if len(shape) == 2:
        return shape[0], shape[1]
    return math.prod(shape[1:]), shape[0]  # conv (out, kh, kw, in)


def lora_init(key: mx.array, base: Tree, *, targets: str | Iterable[str] | PathPredicate = ("*.w",), rank: int = 4,
              scale: float = 1.0, mask: bool = False) -> Tree:
    """A fresh adapter for every base leaf matched by ``targets`` (glob patterns or a path predicate).

    Only weights with two or more dimensions can be targeted (a bias has no low-rank form).
    ``scale`` is kept by the caller (``lora_apply(apply, scale=...)``) and in the adapter config.
    There is no dropout: the merged-weight path has no separate low-rank input to drop out, and the
    functional ``apply(params, x)`` carries no random key (see the module docstring).
    ``mask=True`` adds the all-ones rank mask ``lora_e`` that AdaLoRA-style allocation prunes.
    """
    if rank < 1:
        raise ConfigError(f"lora_init: rank (peft.rank) must be >= 1, got {rank}")
    pick = _predicate(targets)
    chosen = [(p, w) for p, w in tree_flatten(base) if pick(p)]
    if not chosen:
        raise ConfigError(f"lora_init: no parameter matches targets (peft.targets) {list(targets)!r}; name some of the "
                          f"weights: {', '.join(p for p, w in tree_flatten(base) if w.ndim >= 2)}")
    flat = []
    for (path, w), k in zip(chosen, mx.random.split(key, len(chosen))):
        if w.ndim < 2:
            raise ConfigError(f"lora_init: {path} has shape {tuple(w.shape)}; only weights with 2+ dimensions "
                              "can carry a LoRA adapter (peft.targets e.g. '*.w', not biases or norms)")
        d_in, d_out = _matrix_dims(tuple(w.shape))
        r = min(rank, d_in, d_out)  # a rank above min(in, out) adds nothing
        bound = 1.0 / math.sqrt(d_in)
        flat.append((f"{path}.{LORA_A}", mx.random.uniform(-bound, bound, (d_in, r), dtype=w.dtype, key=k)))
        flat.append((f"{path}.{LORA_B}", mx.zeros((r, d_out), dtype=w.dtype)))
        if mask:
            flat.append((f"{path}.{LORA_E}", mx.ones((r,), dtype=w.dtype)))
    return tree_unflatten(flat)


def targets_of(adapter: Tree) -> list[str]:
    """The base paths an adapter modifies, in order."""
    return [p[: -len(LORA_A) - 1] for p, _ in tree_flatten(adapter) if p.endswith("." + LORA_A)]


def delta(node: Tree, shape: tuple[int, ...], scale: float) -> mx.array:
    """scale · A · diag(e) · B, reshaped to the base weight's shape."""
    a, b = node[LORA_A], node[LORA_B]
    if LORA_E in node:
        a = a * node[LORA_E]
    d = scale * (a @ b)
    return d if len(shape) == 2 else d.T.reshape(shape)


def _node(adapter: Tree, path: str) -> Tree:
    for part in path.split("."):
        adapter = adapter[part]
    return adapter


def merge(base: Tree, adapter: Tree, *, scale: float = 1.0) -> Tree:
    """The plain parameters W + ΔW for every adapted weight (the "fused" model); other leaves as in base."""
    flat = dict(tree_flatten(base))
    for path in targets_of(adapter):
        if path not in flat:
            raise ValueError(f"merge: the adapter targets {path!r}, which the base does not have; "
                             "load the adapter onto the base it was made for")
        w = flat[path]
        d = delta(_node(adapter, path), tuple(w.shape), scale)
        if tuple(d.shape) != tuple(w.shape):
            raise ValueError(f"merge: the adapter for {path} gives shape {tuple(d.shape)}, the base weight is "
                             f"{tuple(w.shape)}; load the adapter onto the base it was made for")
        flat[path] = w + d
    return tree_unflatten(list(flat.items()))


def lora_apply(apply: Callable[[Tree, mx.array], mx.array], *, scale: float = 1.0) -> Callable:
    """``apply(params, x)`` → ``apply(base, adapter, x)``: the model with merged weights W + ΔW."""

    def adapted_apply(base: Tree, adapter: Tree, x: mx.array) -> mx.array:
        return apply(merge(base, adapter, scale=scale), x)

    return adapted_apply


def ranks(adapter: Tree) -> dict[str, int]:
    """Active rank per adapted weight (the mask's ones with AdaLoRA, else the factor width)."""
    out = {}
    for path in targets_of(adapter):
        node = _node(adapter, path)
        out[path] = int(mx.sum(node[LORA_E]).item()) if LORA_E in node else node[LORA_A].shape[1]
    return out


def trainable_count(adapter: Tree) -> int:
    """Adapter parameters that take part: r_active · (in + out) per adapted weight."""
    total = 0
    for path, r in ranks(adapter).items():
        node = _node(adapter, path)
        total += r * (node[LORA_A].shape[0] + node[LORA_B].shape[1])
    return total
