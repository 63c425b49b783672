"""Few-shot evaluation: confidence intervals and curves."""

import math

import mlx.core as mx
import numpy as np
import pytest

from reptile_fn.evaluate import few_shot_curve, mean_ci, per_episode_curves
from reptile_fn.inner import InnerLoop
from reptile_fn.losses import mse
from reptile_fn.models import mlp

from helpers import regression_batch


def test_mean_ci_known_answers():
    m, ci = mean_ci(np.full((10, 3), 0.7))
    np.testing.assert_allclose(m, 0.7) and np.testing.assert_allclose(ci, 0.0)
    m, ci = mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    # s = sqrt(5/3), half-width = 1.96 s / 2
    assert m == pytest.approx(2.5) and ci == pytest.approx(1.96 * math.sqrt(5 / 3) / 2)
    m, ci = mean_ci(np.array([[5.0, 6.0]]))
    np.testing.assert_allclose(ci, 0.0)


def test_curves_have_steps_plus_one_points_and_match_direct_computation():
    model = mlp(1, 1, hidden=8)
    params = model.init(mx.random.key(0))
    episodes = regression_batch(0, 6)
    curves = per_episode_curves(InnerLoop(lr=0.05, steps=4), model.apply, mse, params, episodes, chunk_size=4)
    assert curves["loss"].shape == (6, 5)
    direct = [float(mse(model.apply(params, episodes.query_x[i]), episodes.query_y[i])) for i in range(6)]
    np.testing.assert_allclose(curves["loss"][:, 0], direct, rtol=1e-5)
    summary = few_shot_curve(InnerLoop(lr=0.05, steps=4), model.apply, mse, params, episodes)
    assert summary["steps"] == [0, 1, 2, 3, 4] and summary["episodes"] == 6
    np.testing.assert_allclose(summary["loss"]["mean"], curves["loss"].mean(0), rtol=1e-5)


def test_evaluation_is_deterministic_given_the_key():
    model = mlp(1, 1, hidden=8)
    params = model.init(mx.random.key(1))
    episodes = regression_batch(1, 5)
    loop = InnerLoop(lr=0.05, steps=3, batch_size=4)
    a = per_episode_curves(loop, model.apply, mse, params, episodes, key=mx.random.key(3))["loss"]
    b = per_episode_curves(loop, model.apply, mse, params, episodes, key=mx.random.key(3))["loss"]
    np.testing.assert_array_equal(a, b)


def test_the_accuracy_after_k_mini_batch_steps_does_not_depend_on_the_horizon():
    """`eval`'s adaptation-speed horizon (100 steps) extends the curve past K; the first K steps are the same
    mini-batches, so the K-step cell equals a K-step evaluation's (and the training summary's)."""
    model = mlp(1, 1, hidden=8)
    params = model.init(mx.random.key(4))
    episodes = regression_batch(4, 5)  # 10 support points: mini-batches of 3 need a new epoch every ~3 steps
    short, long = (per_episode_curves(InnerLoop(lr=0.05, steps=k, batch_size=3), model.apply, mse, params, episodes,
                                      key=mx.random.key(5), record=list(range(k + 1)))["loss"] for k in (4, 12))
    np.testing.assert_array_equal(long[:, :5], short)
    assert not np.allclose(long[:, 5:], long[:, 4:5])  # the later steps go on adapting


def test_nontransductive_scoring_equals_transductive_without_batch_statistics():
    model = mlp(1, 1, hidden=8)
    params = model.init(mx.random.key(2))
    episodes = regression_batch(2, 4)
    a = per_episode_curves(InnerLoop(lr=0.05, steps=2), model.apply, mse, params, episodes)["loss"]
    b = per_episode_curves(InnerLoop(lr=0.05, steps=2), model.apply, mse, params, episodes, transductive=False)["loss"]
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("transductive", [False, True])
def test_chunks_are_bounded_by_input_size_and_do_not_change_results(monkeypatch, transductive):
    """Evaluation splits episodes into chunks bounded by their input size; the curves stay the same."""
    import reptile_fn.evaluate as E

    model = mlp(1, 1, hidden=8)
    params = model.init(mx.random.key(4))
    episodes = regression_batch(4, 7)
    loop = InnerLoop(lr=0.05, steps=2, batch_size=3)
    kw = dict(transductive=transductive, key=mx.random.key(5))
    whole = per_episode_curves(loop, model.apply, mse, params, episodes, **kw)["loss"]
    n_s, n_q = episodes.support_x.shape[1], episodes.query_x.shape[1]
    per_episode = (n_q * (n_s + 1) if not transductive else n_s + n_q) * episodes.support_x.shape[2]
    sizes = []
    original = E.consecutive  # the default split: record the chunks it gives
    monkeypatch.setattr(E, "consecutive", lambda eps, size: ((sizes.append(len(i)) or (i, e)) for i, e in original(eps, size)))
    monkeypatch.setattr(E, "CHUNK_INPUT_ELEMENTS", 2 * per_episode)  # chunks of 2 episodes: 2, 2, 2, 1
    chunked = per_episode_curves(loop, model.apply, mse, params, episodes, **kw)["loss"]
    assert sizes == [2, 2, 2, 1]
    assert chunked.shape == whole.shape == (7, 3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


def test_split_chunks_in_any_order_give_each_episode_its_own_curve():
    """``split`` (e.g. text episodes grouped by length) may chunk episodes in any order: every episode
    keeps its own key (minibatches) and its own row in the result; a split that loses one is an error."""
    model = mlp(1, 1, hidden=8)
    params = model.init(mx.random.key(6))
    episodes = regression_batch(6, 7)
    loop = InnerLoop(lr=0.05, steps=3, batch_size=3)
    kw = dict(key=mx.random.key(7))
    whole = per_episode_curves(loop, model.apply, mse, params, episodes, **kw)["loss"]

    def shuffled(eps, groups=([5, 0], [3], [6, 1, 4], [2])):
        for g in groups:
            yield np.array(g), type(eps)(*(a[mx.array(g)] for a in eps))

    np.testing.assert_allclose(per_episode_curves(loop, model.apply, mse, params, episodes, split=shuffled, **kw)["loss"],
                               whole, rtol=1e-5)
    with pytest.raises(ValueError, match="every one of the 7 episodes exactly once"):
        per_episode_curves(loop, model.apply, mse, params, episodes, split=lambda e: shuffled(e, ([0, 1], [1, 2])), **kw)


@pytest.mark.parametrize("record", [[2, 0], [0, 5], [0, 0, 2], [0, -1]])
def test_recorded_steps_out_of_order_or_past_the_loop_are_refused(record):
    """record=[2, 0] labelled step 0's numbers as step 2; [0, 5] on a 2-step loop copied step 0 into 'step 5'."""
    model = mlp(1, 1, hidden=8)
    params = model.init(mx.random.key(0))
    episodes = regression_batch(0, 3)
    assert few_shot_curve(InnerLoop(lr=0.05, steps=2), model.apply, mse, params, episodes, record=[0, 2])["steps"] == [0, 2]
    with pytest.raises(ValueError, match="increasing step counts from 0 to the loop's 2 steps"):
        few_shot_curve(InnerLoop(lr=0.05, steps=2), model.apply, mse, params, episodes, record=record)
