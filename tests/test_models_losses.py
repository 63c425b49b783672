"""Models as (init, apply) pairs and the losses."""

import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reptile_fn import tree as T
from reptile_fn.losses import accuracy, cross_entropy, mse
from reptile_fn.models import ACTIVATIONS, mlp

from helpers import same


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 32), st.integers(0, 3),
       st.sampled_from(sorted(ACTIVATIONS)), st.integers(0, 1000))
def test_mlp_shapes_and_param_count(d_in, d_out, hidden, depth, act, seed):
    model = mlp(d_in, d_out, hidden=hidden, depth=depth, activation=act)
    params = model.init(mx.random.key(seed))
    y = model.apply(params, mx.zeros((7, d_in)))
    assert y.shape == (7, d_out)
    dims = [d_in] + [hidden] * depth + [d_out]
    assert T.param_count(params) == sum(a * b + b for a, b in zip(dims, dims[1:]))
    assert sorted(params) == sorted([f"layer{i}" for i in range(depth)] + ["head"])


def test_init_is_deterministic_in_the_key_and_bounded():
    model = mlp(3, 2, hidden=50)
    a, b, c = (model.init(mx.random.key(k)) for k in (1, 1, 2))
    assert same(a, b) and not same(a, c)
    w = np.array(a["layer1"]["w"])
    assert np.abs(w).max() <= 1 / math.sqrt(50) and w.std() > 0.5 / math.sqrt(3 * 50)


def test_losses_on_hand_computed_values():
    assert float(mse(mx.array([1.0, 2.0]), mx.array([0.0, 0.0]))) == pytest.approx(2.5)
    logits = mx.array([[0.0, math.log(3.0)], [2.0, 0.0]])
    labels = mx.array([1, 1])
    # row 0: p(1) = 3/4; row 1: p(1) = 1/(1+e²)
    expected = -(math.log(0.75) + math.log(1 / (1 + math.exp(2)))) / 2
    assert float(cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-6)
    assert float(accuracy(logits, labels)) == pytest.approx(0.5)
    assert float(accuracy(logits, mx.array([1, 0]))) == pytest.approx(1.0)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.integers(1, 5),
       st.sampled_from([1, 2, 3]), st.integers(0, 1000))
def test_im2col_conv_equals_mx_conv2d_values_and_gradients(n, h, w, c, f, stride, seed):
    from reptile_fn.models import conv3x3

    k = mx.random.split(mx.random.key(seed), 4)
    x = mx.random.normal((n, h, w, c), key=k[0])
    wt = mx.random.normal((f, 3, 3, c), key=k[1])
    b = mx.random.normal((f,), key=k[2])
    native = conv3x3(x, wt, b, stride=stride, impl="native")
    ours = conv3x3(x, wt, b, stride=stride, impl="im2col")
    assert ours.shape == native.shape
    np.testing.assert_allclose(np.array(ours), np.array(native), atol=1e-4, rtol=1e-4)
    cot = mx.random.normal(native.shape, key=k[3])

    def grads(impl):
        return mx.grad(lambda x, wt, b: mx.sum(conv3x3(x, wt, b, stride=stride, impl=impl) * cot), argnums=(0, 1, 2))(x, wt, b)

    for g_ours, g_native in zip(grads("im2col"), grads("native")):
        np.testing.assert_allclose(np.array(g_ours), np.array(g_native), atol=1e-3, rtol=1e-4)


def test_conv4_shapes_and_vmapped_gradient():
    from reptile_fn.models import conv4

    model = conv4((28, 28, 1), 5)
    params = model.init(mx.random.key(0))
    x = mx.random.normal((3, 4, 28, 28, 1))  # 3 tasks of 4 images
    y = mx.zeros((3, 4), dtype=mx.int32)
    assert model.apply(params, x[0]).shape == (4, 5)
    assert T.param_count(params) == (9 * 1 * 64 + 64) + 3 * (9 * 64 * 64 + 64) + (2 * 2 * 64 * 5 + 5)
    grads = mx.vmap(mx.grad(lambda p, xb, yb: cross_entropy(model.apply(p, xb), yb)), in_axes=(None, 0, 0))(params, x, y)
    assert grads["conv0"]["w"].shape == (3, 64, 3, 3, 1) and bool(T.all_finite(grads))
    with pytest.raises(ValueError, match="conv_impl"):
        conv4(conv_impl="winograd")


def test_batch_norm_modes_differ_only_in_their_statistics():
    from reptile_fn.models import batch_norm, conv4, nontransductive

    x = mx.random.normal((6, 28, 28, 1), key=mx.random.key(1))
    q = mx.random.normal((4, 28, 28, 1), key=mx.random.key(2))
    plain = conv4(norm=None)
    params = plain.init(mx.random.key(0))
    # without batch statistics, scoring queries one at a time changes nothing
    np.testing.assert_allclose(np.array(nontransductive(plain.apply)(params, x, q)), np.array(plain.apply(params, q)),
                               atol=1e-5)
    bn = conv4(norm="batch")
    pb = bn.init(mx.random.key(0))
    assert sorted(k for k in pb if k.startswith("norm")) == ["norm0", "norm1", "norm2", "norm3"]
    transductive = bn.apply(pb, q)
    one_at_a_time = nontransductive(bn.apply)(pb, x, q)
    assert transductive.shape == one_at_a_time.shape == (4, 5)
    assert not np.allclose(np.array(transductive), np.array(one_at_a_time), atol=1e-3)
    # non-transductive == the last row of a transductive pass over support ∪ {x_q}
    np.testing.assert_allclose(np.array(one_at_a_time[2]),
                               np.array(bn.apply(pb, mx.concatenate([x, q[2:3]]))[-1]), atol=1e-5)
    y = batch_norm(mx.random.normal((3, 4, 4, 2)) * 5 + 2, mx.ones((2,)), mx.zeros((2,)))
    np.testing.assert_allclose(np.array(mx.mean(y, axis=(0, 1, 2))), 0, atol=1e-5)
    np.testing.assert_allclose(np.array(mx.var(y, axis=(0, 1, 2))), 1, atol=1e-3)


def test_max_pool_variant_for_larger_images():
    from reptile_fn.models import conv4, max_pool2

    x = mx.arange(16, dtype=mx.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(np.array(max_pool2(x))[0, :, :, 0], [[5, 7], [13, 15]])
    assert max_pool2(mx.zeros((1, 5, 5, 1))).shape == (1, 3, 3, 1)
    model = conv4((84, 84, 3), 5, filters=32, pool=True, norm="batch")
    assert model.apply(model.init(mx.random.key(0)), mx.zeros((2, 84, 84, 3))).shape == (2, 5)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), stride=st.sampled_from([1, 2, 3]), h=st.integers(1, 16), w=st.integers(1, 16),
       c=st.integers(1, 5), o=st.integers(1, 6))
def test_conv_written_out_gradient_equals_autograd_first_and_second_order(seed, stride, h, w, c, o):
    """conv3x3's hand-written VJP (gradient by stride phases) gives autograd's gradient of the same im2col
    forward, and so does differentiating through it again (second-order MAML), under vmap too."""
    from reptile_fn.models import _cols, conv3x3

    def autograd_conv(x, k, b):
        n, hh, ww, cc = x.shape
        ho, wo = (hh - 1) // stride + 1, (ww - 1) // stride + 1
        out = _cols(x, stride, ho, wo).reshape(n * ho * wo, 9 * cc) @ mx.transpose(k, (1, 2, 3, 0)).reshape(9 * cc, -1)
        return out.reshape(n, ho, wo, -1) + b

    keys = mx.random.split(mx.random.key(seed), 3)
    x = mx.random.normal((2, 3, h, w, c), key=keys[0])
    k = 0.3 * mx.random.normal((o, 3, 3, c), key=keys[1])
    b = mx.random.normal((o,), key=keys[2])

    def loss(conv):
        return lambda x, k, b: mx.sum(mx.tanh(conv(x, k, b)) ** 2)

    ours = mx.vmap(mx.grad(loss(lambda x, k, b: conv3x3(x, k, b, stride=stride)), argnums=(0, 1, 2)),
                   in_axes=(0, None, None))(x, k, b)
    ref = mx.vmap(mx.grad(loss(autograd_conv), argnums=(0, 1, 2)), in_axes=(0, None, None))(x, k, b)
    for a, r in zip(ours, ref):
        np.testing.assert_allclose(np.array(a), np.array(r), rtol=1e-4, atol=1e-5)

    def second(conv):  # d/dk of the squared gradient norm: what MAML differentiates
        first = mx.grad(loss(conv), argnums=(0, 1))
        return mx.grad(lambda k: sum(mx.sum(g * g) for g in first(x[0], k, b)))(k)

    np.testing.assert_allclose(np.array(second(lambda x, k, b: conv3x3(x, k, b, stride=stride))),
                               np.array(second(autograd_conv)), rtol=1e-3, atol=1e-4)


def test_labels_outside_the_heads_classes_make_the_loss_nan_not_a_read_past_the_logits():
    """Label 7 of 5 classes read whatever followed the logits (a plausible loss, -1e28 through MAML, or with 2**30
    a segfault); -1 meant the last class. Now the loss is NaN, which training reports as divergence."""
    logits = mx.random.normal((6, 5), key=mx.random.key(0))
    good = mx.array([0, 1, 2, 3, 4, 0])
    assert math.isfinite(float(cross_entropy(logits, good)))
    for bad in ([7, 1, 2, 3, 4, 0], [-1, 1, 2, 3, 4, 0], [2**30, 1, 2, 3, 4, 0]):
        assert math.isnan(float(cross_entropy(logits, mx.array(bad))))
    grads = mx.grad(lambda z: cross_entropy(z, mx.array([7, 1, 2, 3, 4, 0])))(logits)
    assert bool(mx.all(mx.isfinite(grads[1:])))  # no garbage flows into the rows whose labels are fine


@pytest.mark.parametrize("labels, match", [(mx.eye(5), "one-hot"), (mx.zeros((5, 1), dtype=mx.int32), "one integer"),
                                           (mx.zeros((3,), dtype=mx.int32), "one integer"),
                                           (mx.array([0.0, 1.7, 2.0, 3.0, 4.0]), "integer class indices")])
def test_labels_of_the_wrong_shape_or_dtype_are_refused_by_name(labels, match):
    """One-hot labels scored 0.16 accuracy, float labels were truncated (1.7 -> 1), a short label vector broadcast."""
    logits = mx.zeros((5, 5))
    for fn in (cross_entropy, accuracy):
        with pytest.raises((ValueError, TypeError), match=match):
            fn(logits, labels)


def test_mse_refuses_targets_that_would_broadcast():
    """A (n, 1) model output against (n,) targets broadcast to (n, n): the model then learned the mean."""
    p = mx.arange(5, dtype=mx.float32)
    assert float(mse(p[:, None], p[:, None])) == 0.0
    with pytest.raises(ValueError, match=r"y\[:, None\]"):
        mse(p[:, None], p)


def test_models_refuse_inputs_of_another_shape_and_sizes_below_one():
    """conv4 ran on channels-first or 32×32 images (other feature maps, other numbers); mlp on rows of other widths;
    n_classes 0 gave empty logits and hidden 0 a ZeroDivisionError."""
    from reptile_fn.models import conv4, mlp

    model = conv4((28, 28, 1), 5)
    params = model.init(mx.random.key(0))
    assert model.apply(params, mx.zeros((2, 28, 28, 1))).shape == (2, 5)
    for shape in ((2, 1, 28, 28), (2, 32, 32, 1), (28, 28)):
        with pytest.raises(ValueError, match="it takes images of"):
            model.apply(params, mx.zeros(shape))
    net = mlp(3, 2)
    with pytest.raises(ValueError, match="rows of 3 features"):
        net.apply(net.init(mx.random.key(0)), mx.zeros((4, 5)))
    for make, match in ((lambda: conv4((28, 28, 1), 0), "n_classes = 0"), (lambda: mlp(3, 2, hidden=0), "hidden = 0"),
                        (lambda: conv4((28, 28, 1), 5, filters=0), "filters = 0"),
                        (lambda: mlp(3, 2, activation="Relu"), "unknown activation")):
        with pytest.raises(ValueError, match=match):
            make()
