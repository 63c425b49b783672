"""Tree algebra: the laws add/sub/scale/lerp obey, partition/combine, reductions."""

import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reptile_fn import tree as T
from reptile_fn.tree import Tree

floats = st.floats(-10, 10, allow_nan=False, width=32)


def random_tree(seed: int, lead: tuple = ()) -> Tree:
    k = mx.random.split(mx.random.key(seed), 3)
    return {
        "layer0": {"w": mx.random.normal(lead + (3, 4), key=k[0]), "b": mx.random.normal(lead + (4,), key=k[1])},
        "head": {"w": mx.random.normal(lead + (4, 2), key=k[2])},
    }


def close(a: Tree, b: Tree, atol=1e-5) -> bool:
    fa, fb = dict(flat(a)), dict(flat(b))
    return fa.keys() == fb.keys() and all(np.allclose(np.array(fa[k]), np.array(fb[k]), atol=atol) for k in fa)


def flat(a):
    from mlx.utils import tree_flatten

    return tree_flatten(a)


seeds = st.integers(0, 2**30)


@settings(max_examples=30, deadline=None)
@given(seeds, seeds)
def test_add_sub_inverse_and_commutative(s1, s2):
    a, b = random_tree(s1), random_tree(s2)
    assert close(T.sub(T.add(a, b), b), a)
    assert close(T.add(a, b), T.add(b, a))
    assert close(T.sub(a, a), T.zeros_like(a), atol=0)


@settings(max_examples=30, deadline=None)
@given(seeds, floats, floats)
def test_scale_distributes(s, x, y):
    a = random_tree(s)
    assert close(T.scale(a, x + y), T.add(T.scale(a, x), T.scale(a, y)), atol=1e-3)
    assert close(T.scale(T.scale(a, x), y), T.scale(a, x * y), atol=1e-3)


@settings(max_examples=30, deadline=None)
@given(seeds, seeds, st.floats(0, 1))
def test_lerp_endpoints_and_segment(s1, s2, t):
    a, b = random_tree(s1), random_tree(s2)
    assert close(T.lerp(a, b, 0.0), a, atol=0)
    assert close(T.lerp(a, b, 1.0), b)
    m = T.lerp(a, b, t)
    # on the segment: m − a = t (b − a), and ‖m − a‖ + ‖b − m‖ = ‖b − a‖
    assert close(T.sub(m, a), T.scale(T.sub(b, a), t), atol=1e-4)
    d = float(T.global_norm(T.sub(b, a)))
    assert math.isclose(float(T.global_norm(T.sub(m, a))) + float(T.global_norm(T.sub(b, m))), d, rel_tol=1e-4, abs_tol=1e-4)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 6))
def test_stack_unstack_mean(s, n):
    trees = [random_tree(s + i) for i in range(n)]
    stacked = T.stack(trees)
    assert stacked["layer0"]["w"].shape == (n, 3, 4)
    back = T.unstack(stacked)
    assert len(back) == n and all(close(x, y, atol=0) for x, y in zip(back, trees))
    expected = trees[0]
    for t in trees[1:]:
        expected = T.add(expected, t)
    assert close(T.mean(stacked), T.scale(expected, 1.0 / n), atol=1e-5)


def test_global_norm_vdot_count():
    a = {"x": mx.array([3.0, 0.0]), "y": {"z": mx.array([[4.0]])}}
    assert float(T.global_norm(a)) == pytest.approx(5.0)
    assert float(T.vdot(a, a)) == pytest.approx(25.0)
    assert T.param_count(a) == 3
    assert T.param_count(random_tree(0)) == 12 + 4 + 8


def test_all_finite():
    a = random_tree(1)
    assert bool(T.all_finite(a))
    bad = {**a, "head": {"w": a["head"]["w"].at[0, 0].add(float("nan"))}}
    assert not bool(T.all_finite(bad))
    inf = {**a, "head": {"w": a["head"]["w"] + float("inf")}}
    assert not bool(T.all_finite(inf))


def test_partition_combine_roundtrip_and_match():
    a = random_tree(2)
    head, body = T.partition(a, T.match("head.*"))
    assert T.paths(head) == ["head.w"]
    assert sorted(T.paths(body)) == ["layer0.b", "layer0.w"]
    assert close(T.combine(head, body), a, atol=0)
    everything, nothing = T.partition(a, None)
    assert everything is a and nothing == {}
    none, allp = T.partition(a, lambda p: False)
    assert none == {} and close(allp, a, atol=0)
    assert T.match(["layer*.w", "head.*"])("layer0.w") and not T.match("layer*.w")("layer0.b")


def test_binary_tree_ops_refuse_trees_with_other_leaves_and_vdot_pairs_leaves_by_path():
    """add with an extra leaf in b dropped it; vdot paired leaves by their order, not their paths (33, not 10)."""
    one = {"w": mx.ones((3,)), "b": mx.ones((2,))}
    more = {**one, "c": mx.ones((4,))}
    for op in (T.add, T.sub, lambda a, b: T.lerp(a, b, 0.5), T.vdot, lambda a, b: T.stack([a, b])):
        with pytest.raises(ValueError, match="different leaves .*c only in the second"):
            op(one, more)
        with pytest.raises(ValueError, match="c only in the first"):
            op(more, one)
    a = {"a": mx.array([1.0, 2.0]), "b": mx.array([10.0])}
    b = {"b": mx.array([1.0]), "a": mx.array([3.0, 0.0])}  # the same paths, in another order
    assert float(T.vdot(a, b)) == 1 * 3 + 2 * 0 + 10 * 1
    with pytest.raises(ValueError, match="no trees"):
        T.stack([])
