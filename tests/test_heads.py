"""Heads rebuilt from a support set (prototypes), SetFit's pair loss, and the inner loop's head_init."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reptile_fn import config as C
from reptile_fn import heads
from reptile_fn import run as R
from reptile_fn import tree as T
from reptile_fn.episode import Episode
from reptile_fn.errors import ConfigError
from reptile_fn.evaluate import per_episode_curves
from reptile_fn.inner import InnerLoop, adapt
from reptile_fn.losses import accuracy, cross_entropy
from reptile_fn.models import mlp

MODEL = mlp(3, 4, hidden=16, depth=2)


def support(seed: int, n_per_class: int = 2, n_classes: int = 4):
    x = mx.random.normal((n_per_class * n_classes, 3), key=mx.random.key(seed))
    y = mx.array(np.repeat(np.arange(n_classes), n_per_class).astype(np.int32))
    return x, y


def test_features_are_what_the_head_reads():
    params = MODEL.init(mx.random.key(0))
    x, _ = support(1)
    z = heads.features(MODEL.apply, "head")(params, x)
    assert z.shape == (x.shape[0], 16)
    np.testing.assert_allclose(np.array(z @ params["head"]["w"] + params["head"]["b"]), np.array(MODEL.apply(params, x)),
                               atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0), shots=st.integers(1, 4))
def test_prototype_head_is_the_nearest_class_mean_classifier(seed, scale, shots):
    """logit_k = s·(‖z‖² − ‖z − c_k‖²): the logits differ from −s·‖z − c_k‖² by one constant per example."""
    params = MODEL.init(mx.random.key(seed))
    x, y = support(seed + 1, shots)
    rebuilt = heads.prototype_head(MODEL.apply, "head", scale)(params, (x, y))
    q = mx.random.normal((7, 3), key=mx.random.key(seed + 2))
    z = heads.features(MODEL.apply, "head")(params, q)
    c = heads.class_means(heads.features(MODEL.apply, "head")(params, x), y, 4)
    neg_dist = -scale * mx.sum((z[:, None, :] - c[None]) ** 2, axis=-1)
    logits = MODEL.apply(rebuilt, q)
    gap = np.array(logits - neg_dist)
    np.testing.assert_allclose(gap, np.repeat(gap[:, :1], 4, axis=1), rtol=1e-4, atol=1e-3 * max(1.0, scale))
    assert T.paths(rebuilt) == T.paths(params) and rebuilt["layer0"] is params["layer0"]  # only the head changes


def test_class_without_examples_gets_a_zero_row():
    params = MODEL.init(mx.random.key(0))
    x, y = support(1, 2, n_classes=3)  # classes 0-2 of a 4-way head
    head = heads.prototype_head(MODEL.apply, "head")(params, (x, y))["head"]
    assert float(mx.abs(head["w"][:, 3]).max()) == 0 and float(head["b"][3]) == 0
    assert float(mx.abs(head["w"][:, :3]).max()) > 0


def test_replace_is_pure_and_get_names_a_missing_path():
    params = MODEL.init(mx.random.key(0))
    new = heads.replace(params, "head", {"w": mx.zeros((16, 4)), "b": mx.zeros((4,))})
    assert float(mx.abs(params["head"]["w"]).max()) > 0 and float(mx.abs(new["head"]["w"]).max()) == 0
    with pytest.raises(KeyError, match="base.head"):
        heads.get(params, "base.head")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), factor=st.floats(0.1, 10.0))
def test_pair_loss_reads_directions_only(seed, factor):
    z = mx.random.normal((6, 5), key=mx.random.key(seed))
    y = mx.array([0, 0, 1, 1, 2, 2])
    a, b = float(heads.pair_loss(z, y)), float(heads.pair_loss(factor * z, y))
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6) and a >= 0


def test_pair_loss_is_zero_exactly_when_classes_are_aligned_and_orthogonal():
    e = mx.eye(3)
    y = mx.array([0, 0, 1, 2])
    assert float(heads.pair_loss(mx.stack([e[0], 2 * e[0], e[1], e[2]]), y)) == pytest.approx(0, abs=1e-7)
    # the same-class pair at cos 0 (target 1), the other five pairs right: loss 1/6
    assert float(heads.pair_loss(mx.stack([e[0], e[1], e[2], -e[2]]), mx.array([0, 0, 1, 2]))) == pytest.approx(
        (1 + 1) / 6, rel=1e-5)  # and the pair (e2, -e2) at cos -1 (target 0)


def test_adapt_starts_from_the_rebuilt_head():
    params = MODEL.init(mx.random.key(0))
    x, y = support(1)
    init = heads.prototype_head(MODEL.apply, "head", 2.0)
    out = adapt(InnerLoop(lr=0.1, steps=2, head_init=init), MODEL.apply, cross_entropy, params, (x, y))
    assert float(out.losses[0]) == pytest.approx(float(cross_entropy(MODEL.apply(init(params, (x, y)), x), y)), rel=1e-5)


def episodes(n: int = 3) -> Episode:
    parts = [support(10 + i) for i in range(n)]
    queries = [support(20 + i, 3) for i in range(n)]
    return Episode(mx.stack([p[0] for p in parts]), mx.stack([p[1] for p in parts]),
                   mx.stack([q[0] for q in queries]), mx.stack([q[1] for q in queries]))


def test_evaluation_rebuilds_each_episodes_head_as_adapt_does():
    """The episode-batched evaluation (one compiled step, vmapped) equals adapt episode by episode."""
    params = MODEL.init(mx.random.key(3))
    loop = InnerLoop(lr=0.05, steps=3, optimizer="adam", head_init=heads.prototype_head(MODEL.apply, "head", 1.0))
    eps = episodes()
    got = per_episode_curves(loop, MODEL.apply, cross_entropy, params, eps, metric=accuracy)
    for i in range(eps.support_x.shape[0]):
        qx, qy = eps.query_x[i], eps.query_y[i]
        seen = adapt(loop, MODEL.apply, cross_entropy, params, (eps.support_x[i], eps.support_y[i]),
                     observe=lambda p: cross_entropy(MODEL.apply(p, qx), qy)).observed
        np.testing.assert_allclose(got["loss"][i], np.array(seen), rtol=1e-4, atol=1e-5)


def test_evaluation_refuses_a_head_init_on_frozen_leaves():
    loop = InnerLoop(lr=0.05, steps=1, trainable=T.match("layer*"), head_init=heads.prototype_head(MODEL.apply, "head"))
    with pytest.raises(ValueError, match="head_init"):
        per_episode_curves(loop, MODEL.apply, cross_entropy, MODEL.init(mx.random.key(0)), episodes())


def test_setfit_objective_and_rehead_equal_the_hand_written_loop():
    """objective= adapts on the pair loss; rehead= scores with prototypes of the adapted features."""
    params = MODEL.init(mx.random.key(4))
    feats = heads.features(MODEL.apply, "head")
    rehead = heads.prototype_head(MODEL.apply, "head")
    loop = InnerLoop(lr=0.05, steps=2, trainable=T.match("layer*"))
    eps = episodes(2)
    got = per_episode_curves(loop, MODEL.apply, cross_entropy, params, eps, metric=accuracy,
                             objective=(feats, heads.pair_loss), rehead=rehead)
    for i in range(2):
        s = (eps.support_x[i], eps.support_y[i])
        qx, qy = eps.query_x[i], eps.query_y[i]
        seen = adapt(loop, feats, heads.pair_loss, params, s,
                     observe=lambda p: cross_entropy(MODEL.apply(rehead(p, s), qx), qy)).observed
        np.testing.assert_allclose(got["loss"][i], np.array(seen), rtol=1e-4, atol=1e-5)


def test_config_prototype_head_rebuilds_the_head_and_meta_learns_the_rest():
    cfg = C.load(None, ["peft.head=prototypes", "peft.head_scale=2.0", "meta_batch_size=2", "inner_steps=2"])
    run = R.build(cfg)
    assert run.inner.head_init is not None and R.evaluation_loop(run).head_init is run.inner.head_init
    params = run.initial_params(R.run_keys(0).init)
    new = run.meta.step(params, run.meta.init(params), run.sample_train(mx.random.key(1), 2), mx.random.key(2))[0]
    assert not np.allclose(np.array(new["layer0"]["w"]), np.array(params["layer0"]["w"]))
    with pytest.raises(ConfigError, match="regression"):
        R.build(C.load("sine", ["peft.head=prototypes"]))
    with pytest.raises(ConfigError, match="trainable"):
        C.load(None, ["peft.head=prototypes", "trainable=[layer0.*]"])
