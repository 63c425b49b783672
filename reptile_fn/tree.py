"""Tree algebra over parameter trees: nested dicts of ``mx.array``.

Every function is pure: trees go in, new trees come out. Built on ``mlx.utils``; paths are the
dotted strings of ``tree_flatten`` (``"layer0.w"``). Trees are nested *dicts* (no lists), so that
a subset of a tree is again a valid tree.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Sequence

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map, tree_unflatten

Tree = dict
PathPredicate = Callable[[str], bool]


def add(a: Tree, b: Tree) -> Tree:
    """a + b, leaf by leaf."""
    _same_paths("add", a, b)
    return tree_map(lambda x, y: x + y, a, b)


def sub(a: Tree, b: Tree) -> Tree:
    """a − b, leaf by leaf."""
    _same_paths("sub", a, b)
    return tree_map(lambda x, y: x - y, a, b)


def scale(a: Tree, s: float | mx.array) -> Tree:
    """s · a."""
    return tree_map(lambda x: x * s, a)


def lerp(a: Tree, b: Tree, t: float | mx.array) -> Tree:
    """a + t·(b − a): t = 0 gives a, t = 1 gives b."""
    _same_paths("lerp", a, b)
    return tree_map(lambda x, y: x + t * (y - x), a, b)


def _same_paths(op: str, a: Tree, b: Tree) -> None:
    """A ValueError unless ``a`` and ``b`` have the same leaf paths (``tree_map`` would drop b's extra leaves, or
    fail with a bare KeyError on a missing one). Shapes may differ where they broadcast (a tree against a stack of
    per-task trees)."""
    pa, pb = set(paths(a)), set(paths(b))
    if pa != pb:
        only = sorted(pa - pb)[:3] or sorted(pb - pa)[:3]
        side = "first" if pa - pb else "second"
        raise ValueError(f"tree.{op}: the trees have different leaves ({', '.join(only)} only in the {side}); give "
                         "trees of the same parameters (tree.paths lists them; tree.partition takes a subset)")


def zeros_like(a: Tree) -> Tree:
    return tree_map(mx.zeros_like, a)


def mean(a: Tree, axis: int = 0) -> Tree:
    """Mean of every leaf over a (task) axis."""
    return tree_map(lambda x: mx.mean(x, axis=axis), a)


def stack(trees: Sequence[Tree], axis: int = 0) -> Tree:
    """Stack same-shaped trees along a new (task) axis."""
    if not trees:
        raise ValueError("tree.stack: no trees to stack; give at least one")
    for t in trees[1:]:
        _same_paths("stack", trees[0], t)
    return tree_map(lambda *xs: mx.stack(xs, axis=axis), trees[0], *trees[1:])


def unstack(a: Tree, axis: int = 0) -> list[Tree]:
    """Inverse of ``stack``: a list of trees, one per index along ``axis``."""
    n = tree_flatten(a)[0][1].shape[axis]
    return [tree_map(lambda x: mx.take(x, i, axis=axis), a) for i in range(n)]


def vdot(a: Tree, b: Tree) -> mx.array:
    """Σ_leaves Σ a·b (leaves paired by path)."""
    _same_paths("vdot", a, b)
    other = dict(tree_flatten(b))
    return sum((mx.sum(x * other[p]) for p, x in tree_flatten(a)), mx.array(0.0))


def global_norm(a: Tree) -> mx.array:
    """‖a‖₂ over all leaves together."""
    return mx.sqrt(sum((mx.sum(mx.square(x)) for _, x in tree_flatten(a)), mx.array(0.0)))


def all_finite(a: Tree) -> mx.array:
    """True iff no leaf holds a NaN or ±Inf (a scalar bool array)."""
    leaves = [mx.all(mx.isfinite(x)) for _, x in tree_flatten(a)]
    return mx.all(mx.stack(leaves)) if leaves else mx.array(True)


def param_count(a: Tree) -> int:
    """Total number of scalar parameters."""
    return sum(x.size for _, x in tree_flatten(a))


def paths(a: Tree) -> list[str]:
    """Dotted leaf paths, in ``tree_flatten`` order."""
    return [p for p, _ in tree_flatten(a)]


def match(patterns: str | Iterable[str]) -> PathPredicate:
    """A path predicate from glob patterns (``fnmatch``): ``match(["head.*"])("head.w")`` is True."""
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    return lambda path: any(fnmatch.fnmatchcase(path, p) for p in pats)


def partition(a: Tree, trainable: PathPredicate | None) -> tuple[Tree, Tree]:
    """Split a tree into (selected, rest) by a path predicate; ``None`` selects everything."""
    flat = tree_flatten(a)
    if trainable is None:
        return a, {}
    chosen = [(p, x) for p, x in flat if trainable(p)]
    rest = [(p, x) for p, x in flat if not trainable(p)]
    return _unflatten(chosen), _unflatten(rest)


def combine(*trees: Tree) -> Tree:
    """Merge disjoint trees (the inverse of ``partition``)."""
    flat: list = []
    for t in trees:
        flat.extend(tree_flatten(t))
    return _unflatten(flat)


def _unflatten(flat: list) -> Tree:
    # tree_unflatten([]) is [], but an empty parameter subset should still be a dict.
    return tree_unflatten(flat) if flat else {}
