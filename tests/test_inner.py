"""The one inner loop: SGD/Adam steps, trainable subsets, mini-batches, observation."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_map

from reptile_fn import tree as T
from reptile_fn.inner import InnerLoop, adapt, batch_indices
from reptile_fn.losses import mse
from reptile_fn.models import mlp

from helpers import max_abs_diff, regression_batch, same

MODEL = mlp(1, 1, hidden=8, depth=2)


def task(seed=0, n=10):
    b = regression_batch(seed, 1, n)
    return (b.support_x[0], b.support_y[0]), (b.query_x[0], b.query_y[0])


def test_zero_steps_is_identity():
    params = MODEL.init(mx.random.key(0))
    support, _ = task()
    out, losses = adapt(InnerLoop(lr=0.1, steps=0), MODEL.apply, mse, params, support)[:2]
    assert same(out, params) and losses.shape == (0,)


def test_one_sgd_step_matches_hand_computation():
    params = MODEL.init(mx.random.key(1))
    (x, y), _ = task(1)
    grads = mx.grad(lambda p: mse(MODEL.apply(p, x), y))(params)
    expected = tree_map(lambda p, g: p - 0.05 * g, params, grads)
    out, losses = adapt(InnerLoop(lr=0.05, steps=1), MODEL.apply, mse, params, (x, y))[:2]
    assert max_abs_diff(out, expected) < 1e-6
    assert float(losses[0]) == pytest.approx(float(mse(MODEL.apply(params, x), y)), rel=1e-6)


def test_sgd_lowers_support_loss():
    params = MODEL.init(mx.random.key(2))
    support, _ = task(2)
    _, losses = adapt(InnerLoop(lr=0.05, steps=30), MODEL.apply, mse, params, support)[:2]
    assert float(losses[-1]) < 0.5 * float(losses[0])


def test_tree_learning_rate_with_equal_entries_equals_scalar():
    params = MODEL.init(mx.random.key(3))
    support, _ = task(3)
    lr_tree = tree_map(lambda p: mx.full(p.shape, 0.03), params)
    a, _ = adapt(InnerLoop(lr=0.03, steps=3), MODEL.apply, mse, params, support)[:2]
    b, _ = adapt(InnerLoop(lr=lr_tree, steps=3), MODEL.apply, mse, params, support)[:2]
    assert max_abs_diff(a, b) < 1e-6


def test_adam_first_step_moves_by_lr_times_sign():
    # fresh Adam state: m̂ = g, v̂ = g², so the first update is lr·g/(|g| + eps) ≈ lr·sign(g)
    params = MODEL.init(mx.random.key(4))
    (x, y), _ = task(4)
    grads = mx.grad(lambda p: mse(MODEL.apply(p, x), y))(params)
    out, _ = adapt(InnerLoop(lr=0.01, steps=1, optimizer="adam", adam_betas=(0.0, 0.999)), MODEL.apply, mse, params, (x, y))[:2]
    expected = tree_map(lambda p, g: p - 0.01 * g / (mx.abs(g) + 1e-8), params, grads)
    assert max_abs_diff(out, expected) < 1e-6


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 1000), st.integers(0, 4), st.sampled_from(["sgd", "adam"]),
       st.lists(st.sampled_from(["layer0.*", "layer1.w", "head.b", "head.*", "*.b"]), min_size=1, max_size=3))
def test_frozen_leaves_never_change(seed, steps, optimizer, patterns):
    params = MODEL.init(mx.random.key(seed))
    support, _ = task(seed)
    pred = T.match(patterns)
    out, _ = adapt(InnerLoop(lr=0.1, steps=steps, optimizer=optimizer, trainable=pred), MODEL.apply, mse, params, support)[:2]
    _, frozen_before = T.partition(params, pred)
    _, frozen_after = T.partition(out, pred)
    assert same(frozen_before, frozen_after)
    if steps:
        moved, _ = T.partition(out, pred)
        start, _ = T.partition(params, pred)
        assert max_abs_diff(moved, start) > 0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 8), st.integers(0, 99))
def test_batch_indices_are_epochs_of_permutations(n, b, steps, seed):
    b = min(b, n)
    idx = np.array(batch_indices(mx.random.key(seed), n, b, steps))
    assert idx.shape == (steps, b)
    flat = idx.reshape(-1)
    for e in range(0, len(flat), n):  # every full epoch is a permutation of 0..n-1
        chunk = flat[e:e + n]
        if len(chunk) == n:
            assert sorted(chunk) == list(range(n))
        else:
            assert len(set(chunk)) == len(chunk)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 8), st.integers(1, 8), st.integers(0, 99))
def test_batch_indices_of_a_longer_horizon_start_with_the_shorter_ones(n, b, steps, more, seed):
    """Step t's mini-batch is the same however many steps follow: an evaluation scored at 50 steps gives the
    same 50-step accuracy whether it stops there or goes on to 100 (the adaptation-speed horizon)."""
    b = min(b, n)
    short = np.array(batch_indices(mx.random.key(seed), n, b, steps))
    long = np.array(batch_indices(mx.random.key(seed), n, b, steps + more))
    assert (long[:steps] == short).all()


def test_minibatches_need_a_key_and_full_batch_size_equals_full_batch():
    params = MODEL.init(mx.random.key(5))
    support, _ = task(5, n=10)
    with pytest.raises(ValueError, match="key"):
        adapt(InnerLoop(lr=0.1, steps=2, batch_size=5), MODEL.apply, mse, params, support)
    a, _ = adapt(InnerLoop(lr=0.1, steps=2), MODEL.apply, mse, params, support)[:2]
    b, _ = adapt(InnerLoop(lr=0.1, steps=2, batch_size=10), MODEL.apply, mse, params, support, key=mx.random.key(0))[:2]
    c, _ = adapt(InnerLoop(lr=0.1, steps=2, batch_size=5), MODEL.apply, mse, params, support, key=mx.random.key(0))[:2]
    assert same(a, b) and not same(a, c)


def test_observe_records_every_step_including_start_and_end():
    params = MODEL.init(mx.random.key(6))
    support, (qx, qy) = task(6)
    out, losses, (q,) = adapt(InnerLoop(lr=0.05, steps=4), MODEL.apply, mse, params, support, observe=lambda p: (mse(MODEL.apply(p, qx), qy),))[:3]
    assert q.shape == (5,) and losses.shape == (4,)
    assert float(q[0]) == pytest.approx(float(mse(MODEL.apply(params, qx), qy)), rel=1e-6)
    assert float(q[-1]) == pytest.approx(float(mse(MODEL.apply(out, qx), qy)), rel=1e-6)


@pytest.mark.parametrize("steps, every", [(25, 10), (7, 7), (3, 10)])
def test_settling_every_few_steps_changes_no_number_and_reports_every_step(steps, every):
    """`adapt --steps 10000` built one lazy graph of every step (1.9 GB and rising, no prompt stop on SIGTERM);
    settled every n steps it holds n. Same parameters, losses and observations; progress counts every step once."""
    params = MODEL.init(mx.random.key(6))
    support, (qx, qy) = task(6, n=12)
    loop = InnerLoop(lr=0.05, steps=steps, optimizer="adam", batch_size=5)
    watch = lambda p: mse(MODEL.apply(p, qx), qy)  # noqa: E731
    plain = adapt(loop, MODEL.apply, mse, params, support, mx.random.key(1), observe=watch)
    told = []
    settled = adapt(loop, MODEL.apply, mse, params, support, mx.random.key(1), observe=watch, settle_every=every,
                    on_settle=told.append)
    assert same(plain.params, settled.params) and same(plain.state.opt, settled.state.opt)
    assert np.array_equal(np.array(plain.losses), np.array(settled.losses))
    assert np.array_equal(np.array(plain.observed), np.array(settled.observed))
    assert sum(told) == steps and told == [every] * (steps // every) + ([steps % every] if steps % every else [])


def test_adapt_is_differentiable_and_first_order_drops_second_order_terms():
    params = MODEL.init(mx.random.key(7))
    support, (qx, qy) = task(7)

    def outer(p, first_order):
        q, _ = adapt(InnerLoop(lr=0.1, steps=2, first_order=first_order), MODEL.apply, mse, p, support)[:2]
        return mse(MODEL.apply(q, qx), qy)

    g2 = mx.grad(lambda p: outer(p, False))(params)
    g1 = mx.grad(lambda p: outer(p, True))(params)
    assert bool(T.all_finite(g2)) and bool(T.all_finite(g1))
    assert max_abs_diff(g1, g2) > 1e-6  # the Hessian terms matter


def test_adapt_refuses_a_support_set_whose_inputs_and_targets_differ_in_number():
    """Mini-batch indices come from x: a shorter y was indexed past its end (reading its parent's values), a longer
    one had its last targets ignored, and a single target broadcast to every input."""
    from reptile_fn.inner import InnerLoop, adapt
    from reptile_fn.losses import cross_entropy
    from reptile_fn.models import mlp

    net = mlp(2, 3)
    params = net.init(mx.random.key(0))
    x, y = mx.zeros((10, 2)), mx.zeros((10,), dtype=mx.int32)
    assert adapt(InnerLoop(lr=0.1, steps=2, batch_size=4), net.apply, cross_entropy, params, (x, y),
                 mx.random.key(1)).losses.shape == (2,)
    for support in ((x, y[:8]), (x[:8], y), (x, y[:1])):
        with pytest.raises(ValueError, match="one target per input"):
            adapt(InnerLoop(lr=0.1, steps=2, batch_size=4), net.apply, cross_entropy, params, support, mx.random.key(1))
    for loop in (InnerLoop(steps=-3), InnerLoop(steps=2, batch_size=0)):
        with pytest.raises(ValueError, match="steps must be >= 0 and batch_size >= 1"):
            adapt(loop, net.apply, cross_entropy, params, (x, y), mx.random.key(1))


def test_adapt_names_a_fractional_step_count_and_a_trainable_given_as_patterns():
    """steps=2.0 and batch_size=2.5 were Python TypeErrors deep inside; trainable=['head.*'] was "'list' object
    is not callable"."""
    net = mlp(2, 1)
    params = net.init(mx.random.key(0))
    support = (mx.zeros((4, 2)), mx.zeros((4, 1)))
    for loop in (InnerLoop(steps=2.0), InnerLoop(steps=2, batch_size=2.5)):
        with pytest.raises(TypeError, match="give whole numbers"):
            adapt(loop, net.apply, mse, params, support, mx.random.key(1))
    with pytest.raises(TypeError, match=r"tree.match\(\['head.\*'\]\)"):
        adapt(InnerLoop(steps=1, trainable=["head.*"]), net.apply, mse, params, support)
    adapt(InnerLoop(steps=1, trainable=T.match(["head.*"])), net.apply, mse, params, support)
