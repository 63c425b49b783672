"""The MAML family: meta-gradients against finite differences and hand computations, variants, batching."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from reptile_fn import tree as T
from reptile_fn.algorithms import ALGORITHMS, maml
from reptile_fn.inner import InnerLoop, adapt
from reptile_fn.losses import mse
from reptile_fn.models import HEAD, mlp

from helpers import max_abs_diff, meta_train_sine, outer, regression_batch, same

TINY = mlp(1, 1, hidden=4, depth=1, activation="tanh")  # smooth, so finite differences are meaningful


def meta_gradient(meta, params, batch, key=mx.random.key(0)):
    """The meta-gradient a step applies: with outer SGD at lr 1, θ_new = θ − g."""
    new, _, _ = meta.step(params, meta.init(params), batch, key)
    return T.sub(params, new)


def sgd_step(model=TINY, inner_lr=0.1, inner_steps=2, **kw):
    return maml.make_step(model.apply, mse, InnerLoop(lr=inner_lr, steps=inner_steps), outer("sgd", 1.0), **kw)


def query_loss_after_adaptation(params, batch, inner_lr=0.1, steps=2):
    total = 0.0
    n = batch.support_x.shape[0]
    for i in range(n):
        adapted = adapt(InnerLoop(lr=inner_lr, steps=steps), TINY.apply, mse, params,
                        (batch.support_x[i], batch.support_y[i])).params
        total = total + mse(TINY.apply(adapted, batch.query_x[i]), batch.query_y[i])
    return total / n


def test_maml_meta_gradient_matches_central_finite_differences():
    # float32 throughout: central differences with eps = 1e-2 have truncation error O(eps²) and rounding
    # error ~1e-7/eps, so we ask for agreement to 2e-3 absolute + 2% relative on every coordinate.
    params = TINY.init(mx.random.key(3))
    batch = regression_batch(3, 2, n=6)
    g = dict(tree_flatten(meta_gradient(sgd_step(), params, batch)))
    g_first = dict(tree_flatten(meta_gradient(sgd_step(first_order=True), params, batch)))
    flat = dict(tree_flatten(params))
    eps = 1e-2
    fd_err, fo_err = 0.0, 0.0
    for path, leaf in flat.items():
        values = np.array(leaf).reshape(-1)
        for j in range(values.size):
            def shifted(delta):
                v = values.copy()
                v[j] += delta
                tree = tree_unflatten([(p, mx.array(v.reshape(leaf.shape)) if p == path else x) for p, x in flat.items()])
                return float(query_loss_after_adaptation(tree, batch))
            fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
            ours = float(np.array(g[path]).reshape(-1)[j])
            assert ours == pytest.approx(fd, abs=2e-3, rel=2e-2), (path, j, ours, fd)
            fd_err = max(fd_err, abs(ours - fd))
            fo_err = max(fo_err, abs(float(np.array(g_first[path]).reshape(-1)[j]) - fd))
    assert fo_err > 5 * fd_err  # the second-order terms are real, and MAML has them


def test_zero_inner_steps_maml_equals_fomaml_equals_query_gradient():
    params = TINY.init(mx.random.key(1))
    batch = regression_batch(1, 3)
    g_maml = meta_gradient(sgd_step(inner_steps=0), params, batch)
    g_fo = meta_gradient(sgd_step(inner_steps=0, first_order=True), params, batch)

    def query(p):
        return mx.mean(mx.stack([mse(TINY.apply(p, batch.query_x[i]), batch.query_y[i]) for i in range(3)]))

    expected = mx.grad(query)(params)
    assert max_abs_diff(g_maml, expected) < 1e-6 and max_abs_diff(g_fo, expected) < 1e-6


def test_fomaml_one_step_equals_query_gradient_at_adapted_params():
    params = TINY.init(mx.random.key(2))
    batch = regression_batch(2, 2)
    g = meta_gradient(sgd_step(inner_steps=1, inner_lr=0.05, first_order=True), params, batch)
    hand = []
    for i in range(2):
        x, y = batch.support_x[i], batch.support_y[i]
        support_grad = mx.grad(lambda p: mse(TINY.apply(p, x), y))(params)
        adapted = tree_map(lambda p, s: p - 0.05 * s, params, support_grad)
        hand.append(mx.grad(lambda p: mse(TINY.apply(p, batch.query_x[i]), batch.query_y[i]))(adapted))
    assert max_abs_diff(g, T.mean(T.stack(hand))) < 1e-6


def test_metasgd_with_uniform_alpha_moves_theta_exactly_like_maml():
    params = TINY.init(mx.random.key(4))
    batch = regression_batch(4, 3)
    loop = InnerLoop(lr=0.07, steps=2)
    plain = maml.make_step(TINY.apply, mse, loop, outer("adam", 0.01))
    m, s, _ = plain.step(params, plain.init(params), batch, mx.random.key(0))
    meta_sgd = maml.metasgd(TINY.apply, mse, loop, outer("adam", 0.01))
    state = meta_sgd.init(params)
    assert all(float(mx.max(mx.abs(a - 0.07))) == 0 for _, a in tree_flatten(state["inner_lr"]))
    q, state2, _ = meta_sgd.step(params, state, batch, mx.random.key(0))
    assert max_abs_diff(m, q) < 1e-6
    assert max_abs_diff(state2["inner_lr"], state["inner_lr"]) > 0  # α is meta-learned
    assert meta_sgd.inner(state2).lr is state2["inner_lr"]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), hidden=st.integers(1, 8), depth=st.integers(1, 3), steps=st.integers(1, 3))
def test_anil_never_changes_the_body_in_the_inner_loop_but_meta_learns_it(seed, hidden, depth, steps):
    model = mlp(1, 1, hidden=hidden, depth=depth, activation="tanh")  # no dead ReLUs: the body always gets a gradient
    params = model.init(mx.random.key(seed))
    batch = regression_batch(seed, 2)
    head = T.match(HEAD)
    adapted = adapt(InnerLoop(lr=0.1, steps=steps, trainable=head), model.apply, mse, params,
                    (batch.support_x[0], batch.support_y[0])).params
    assert same(T.partition(adapted, head)[1], T.partition(params, head)[1])
    anil = maml.anil(model.apply, mse, InnerLoop(lr=0.1, steps=steps), outer("adam", 0.01))
    assert anil.inner(anil.init(params)).trainable("head.w") and not anil.inner(anil.init(params)).trainable("layer0.w")
    new, _, _ = anil.step(params, anil.init(params), batch, mx.random.key(0))
    assert max_abs_diff(T.partition(new, head)[1], T.partition(params, head)[1]) > 0  # the outer loop moves the body


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil"])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), n_tasks=st.integers(1, 5), steps=st.integers(0, 3),
       inner_opt=st.sampled_from(["sgd", "adam"]), batch_size=st.sampled_from([None, 4]))
def test_vmapped_compiled_step_equals_serial_reference(name, seed, n_tasks, steps, inner_opt, batch_size):
    model = mlp(1, 1, hidden=8, depth=2)
    # Outer SGD: the step is then the meta-gradient itself. Outer Adam would turn a meta-gradient coordinate
    # that is ~0 (a float-noise-level difference between the batched and the serial sums, which second-order
    # MAML through an inner Adam step produces, its derivative growing like 1/|g|) into a ±lr step of either
    # sign (maml seed 4: 3.8e-4 apart after two Adam steps, 1.5e-8 apart with SGD). The outer optimizer
    # runs after the tasks are reduced, the same code on both paths; tests/test_optim.py checks it.
    loop = InnerLoop(lr=0.05, steps=steps, optimizer=inner_opt, batch_size=batch_size)
    fast = ALGORITHMS[name](model.apply, mse, loop, outer("sgd", 0.01))
    ref = ALGORITHMS[name](model.apply, mse, loop, outer("sgd", 0.01), batched=False, compiled=False)
    p_fast = p_ref = model.init(mx.random.key(seed))
    s_fast, s_ref = fast.init(p_fast), ref.init(p_ref)
    for i in range(2):
        batch = regression_batch(seed + i, n_tasks)
        p_fast, s_fast, m_fast = fast.step(p_fast, s_fast, batch, mx.random.key(i))
        p_ref, s_ref, m_ref = ref.step(p_ref, s_ref, batch, mx.random.key(i))
    assert max_abs_diff(p_fast, p_ref) < 1e-5
    assert max_abs_diff(s_fast, s_ref) < 1e-5
    for k in m_fast:  # metrics can be large (losses): compare relatively
        np.testing.assert_allclose(np.array(m_fast[k]), np.array(m_ref[k]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil", "reptile"])
def test_each_algorithm_learns_sine(name):
    # Evaluated after as many inner steps as training used (1 for the MAML family, as in Finn et al.;
    # 5 for Reptile): Meta-SGD's learned rates are tuned for that count and may diverge far beyond it.
    from reptile_fn.evaluate import per_episode_curves
    model = mlp(1, 1, hidden=40, depth=2)
    steps = 5 if name == "reptile" else 1
    opt = outer("sgd", 1.0, 0.0, 2000) if name == "reptile" else outer("adam", 1e-3)
    meta = ALGORITHMS[name](model.apply, mse, InnerLoop(lr=0.01, steps=steps), opt)
    tasks, init, params, state = meta_train_sine(meta, model, 2000)
    test = tasks.sample_test(mx.random.key(10_000), 200)
    loop = meta.inner(state)  # learned rates (Meta-SGD), the head only (ANIL)
    meta_mse = per_episode_curves(loop, model.apply, mse, params, test)["loss"][:, -1].mean()
    rand_mse = per_episode_curves(loop._replace(lr=0.01), model.apply, mse, init, test)["loss"][:, -1].mean()
    assert meta_mse < 0.5 * rand_mse, (name, meta_mse, rand_mse)


def test_anil_masked_inner_loop_gives_the_frozen_body_meta_gradient():
    # The compiled ANIL step adapts every leaf with lr 0 outside the head (an MLX compile workaround);
    # its meta-gradient must equal the uncompiled one of an inner loop that truly freezes the body.
    model = mlp(2, 2, hidden=16, depth=2, activation="tanh")
    params = model.init(mx.random.key(5))
    x = mx.random.normal((3, 20, 2), key=mx.random.key(6))
    y = mx.random.normal((3, 20, 2), key=mx.random.key(7))
    from reptile_fn.episode import Episode

    batch = Episode(x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])
    head = T.match(HEAD)
    meta = maml.anil(model.apply, mse, InnerLoop(lr=0.1, steps=4), outer("sgd", 1.0))
    g = meta_gradient(meta, params, batch)

    def objective(p):
        losses = []
        for i in range(3):
            adapted = adapt(InnerLoop(lr=0.1, steps=4, trainable=head), model.apply, mse, p,
                            (batch.support_x[i], batch.support_y[i])).params
            losses.append(mse(model.apply(adapted, batch.query_x[i]), batch.query_y[i]))
        return mx.mean(mx.stack(losses))

    assert max_abs_diff(g, mx.grad(objective)(params)) < 1e-5


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_whose_head_pattern_matches_nothing_says_so(first_order):
    """Second-order ANIL adapted every leaf at rate 0 outside the pattern: a typo adapted nothing, silently."""
    params = TINY.init(mx.random.key(0))
    meta = maml.anil(TINY.apply, mse, InnerLoop(lr=0.1, steps=2, trainable=T.match(["heads.*"])), outer("sgd", 1.0),
                     first_order=first_order)
    with pytest.raises(ValueError, match="matches no parameter.*layer0"):
        meta.step(params, meta.init(params), regression_batch(0, 2), mx.random.key(1))
