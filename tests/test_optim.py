"""One optimizer module for both loops: update rules, schedules, masks, and the inner loop built on them."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_map

from reptile_fn import optim
from reptile_fn import tree as T
from reptile_fn.inner import InnerLoop, adapt
from reptile_fn.losses import mse
from reptile_fn.models import mlp

from helpers import max_abs_diff, regression_batch, same

MODEL = mlp(1, 1, hidden=6, depth=1)


def grads_like(params, seed):
    keys = iter(mx.random.split(mx.random.key(seed), len(T.paths(params))))
    return tree_map(lambda p: mx.random.normal(p.shape, key=next(keys)), params)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), lr=st.floats(1e-4, 2.0), step=st.integers(0, 50))
def test_sgd_update_is_lr_times_gradient(seed, lr, step):
    params = MODEL.init(mx.random.key(seed))
    g = grads_like(params, seed)
    opt = optim.sgd(lr)
    updates, state = opt.update(g, opt.init(params), step)
    assert state == {} and max_abs_diff(updates, T.scale(g, lr)) < 1e-6
    assert max_abs_diff(optim.apply_updates(params, updates), T.sub(params, T.scale(g, lr))) == 0.0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), lr=st.floats(1e-4, 1.0))
def test_adam_first_step_is_lr_times_sign_and_matches_hand_math_later(seed, lr):
    params = MODEL.init(mx.random.key(seed))
    opt = optim.adam(lr)
    g1, g2 = grads_like(params, seed), grads_like(params, seed + 1)
    u1, s1 = opt.update(g1, opt.init(params), 0)
    # fresh moments: m̂ = g, v̂ = g², so the first update is lr·g/(|g| + ε)
    expected = tree_map(lambda g: lr * g / (mx.abs(g) + 1e-8), g1)
    assert max_abs_diff(u1, expected) < 1e-5 * max(lr, 1e-3)
    u2, _ = opt.update(g2, s1, 1)
    m = tree_map(lambda a, b: 0.9 * a * 0.1 + 0.1 * b, g1, g2)  # β1·(0.1·g1) + 0.1·g2
    v = tree_map(lambda a, b: 0.999 * 0.001 * a * a + 0.001 * b * b, g1, g2)
    by_hand = tree_map(lambda m_, v_: lr * (m_ / (1 - 0.9 ** 2)) / (mx.sqrt(v_ / (1 - 0.999 ** 2)) + 1e-8), m, v)
    assert max_abs_diff(u2, by_hand) < 1e-4 * max(lr, 1e-3)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(["sgd", "adam"]),
       patterns=st.sampled_from([["head.*"], ["layer0.w"], ["*.b"]]))
def test_masked_optimizer_never_moves_leaves_outside_the_predicate(seed, name, patterns):
    params = MODEL.init(mx.random.key(seed))
    pred = T.match(patterns)
    opt = optim.masked(optim.make(name, 0.1), pred)
    state, p = opt.init(params), params
    for step in range(3):
        updates, state = opt.update(grads_like(params, seed + step), state, step)
        p = optim.apply_updates(p, updates)
    assert same(T.partition(p, pred)[1], T.partition(params, pred)[1])
    assert max_abs_diff(T.partition(p, pred)[0], T.partition(params, pred)[0]) > 0


def test_linear_schedule_anneals_and_holds_and_the_optimizer_reports_it():
    sched = optim.linear_schedule(1.0, 0.0, 10)
    np.testing.assert_allclose([float(sched(mx.array(t))) for t in (0, 5, 10, 20)], [1.0, 0.5, 0.0, 0.0], atol=1e-7)
    assert float(optim.linear_schedule(0.3, None, 10)(mx.array(7))) == np.float32(0.3)
    opt = optim.sgd(sched)
    assert float(opt.learning_rate(mx.array(5))) == 0.5
    updates, _ = opt.update({"w": mx.ones((2,))}, {}, mx.array(5))
    np.testing.assert_allclose(np.array(updates["w"]), [0.5, 0.5])


def test_a_tree_of_rates_scales_each_leaf():
    params = MODEL.init(mx.random.key(0))
    rates = tree_map(lambda p: mx.full(p.shape, 0.0), params)
    rates["head"]["w"] = mx.full(params["head"]["w"].shape, 0.5)
    g = grads_like(params, 1)
    updates, _ = optim.sgd(rates).update(g, {}, 0)
    assert max_abs_diff(updates["head"]["w"], 0.5 * g["head"]["w"]) < 1e-7
    assert T.global_norm(T.partition(updates, lambda p: p != "head.w")[0]).item() == 0.0


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 4), name=st.sampled_from(["sgd", "adam"]))
def test_the_inner_loop_steps_with_the_outer_loops_optimizer(seed, steps, name):
    """adapt(θ) equals θ stepped by hand with optim.make(name) on the support loss: one optimizer, both loops."""
    params = MODEL.init(mx.random.key(seed))
    b = regression_batch(seed, 1)
    x, y = b.support_x[0], b.support_y[0]
    loop = InnerLoop(lr=0.05, steps=steps, optimizer=name, adam_betas=(0.5, 0.9))
    out = adapt(loop, MODEL.apply, mse, params, (x, y))
    opt = optim.make(name, 0.05, betas=(0.5, 0.9))
    p, state = params, opt.init(params)
    for t in range(steps):
        g = mx.grad(lambda q: mse(MODEL.apply(q, x), y))(p)
        updates, state = opt.update(g, state, t)
        p = optim.apply_updates(p, updates)
    assert max_abs_diff(out.params, p) < 1e-6
    assert out.state.t == steps and max_abs_diff(out.state.opt, state) < 1e-6
    assert out.losses.shape == (steps,) and out.observed is None


def test_a_rate_tree_of_other_parameters_and_a_negative_schedule_length_are_refused():
    """A Meta-SGD rate tree missing a parameter was a bare KeyError ('layer0'); linear_schedule(1, 0, -10) made the
    rate grow (1.0, then 1.5)."""
    from reptile_fn import optim

    grads = {"layer0": {"w": mx.ones((2,))}, "head": {"w": mx.ones((2,))}}
    sgd = optim.make("sgd", {"head": {"w": mx.ones((2,))}})
    with pytest.raises(ValueError, match="one rate per trained parameter"):
        sgd.update(grads, sgd.init(grads), 0)
    ok = optim.make("sgd", {"layer0": {"w": mx.ones((2,))}, "head": {"w": mx.ones((2,))}})
    ok.update(grads, ok.init(grads), 0)
    with pytest.raises(ValueError, match="total = -10 steps"):
        optim.linear_schedule(1.0, 0.0, -10)
    assert float(optim.linear_schedule(1.0, 0.0, 10)(5)) == pytest.approx(0.5)
