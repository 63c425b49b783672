"""Task families and the task distribution: shapes, balance, keys, pool, geometry, errors."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reptile_fn.errors import ConfigError
from reptile_fn.tasks import (
    FAMILIES,
    Episode,
    TaskDistribution,
    TaskFamily,
    Tasks,
    make_distribution,
    sine,
    sine_curve,
    toy2d,
)

CLASSIFICATION = ("linear", "xor", "circles", "spiral")
FAMILY_SETS = [("sine",), *((name,) for name in CLASSIFICATION), CLASSIFICATION]
FAMILY_SET_IDS = ["sine", *CLASSIFICATION, "mixture"]
FAST = settings(max_examples=15, deadline=None)
EPS = 1e-4


def make(families=CLASSIFICATION, *, k_shot=3, query_size=4, num_train_tasks=0, seed=0):
    return make_distribution(
        families, k_shot=k_shot, query_size=query_size, num_train_tasks=num_train_tasks, seed=seed
    )


def split2(key):
    first, second = mx.random.split(key)
    return first, second


def assert_episodes_equal(a: Episode, b: Episode) -> None:
    for name, x, y in zip(Episode._fields, a, b):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(np.array(x), np.array(y), err_msg=name)


def key_rows(keys: mx.array) -> set[tuple[int, int]]:
    return {tuple(row) for row in np.array(keys).tolist()}


def task_rows(tasks: Tasks) -> set[tuple[int, int, int]]:
    """Each task as (family_id, *key)."""
    ids, keys = np.array(tasks.family_ids).tolist(), np.array(tasks.keys).tolist()
    return {(f, *k) for f, k in zip(ids, keys)}


# --- registry and single families -----------------------------------------------------------


def test_registry_lists_the_five_families_with_their_signatures():
    assert set(FAMILIES) == {"sine", *CLASSIFICATION}
    assert all(isinstance(f, TaskFamily) and f.name == name for name, f in FAMILIES.items())
    assert FAMILIES["sine"][1:4] == ("regression", 1, 1)
    for name in CLASSIFICATION:
        assert FAMILIES[name][1:4] == ("classification", 2, 2)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_sample_data_shapes_dtypes_and_balance(name):
    family = FAMILIES[name]
    params_key, data_key = split2(mx.random.key(7))
    x, y = family.sample_data(family.sample_params(params_key), data_key, 6)
    assert x.dtype == mx.float32
    if family.kind == "regression":
        assert x.shape == (6, family.in_dim) and y.shape == (6, family.out_dim)
        assert y.dtype == mx.float32
    else:
        assert x.shape == (6 * family.out_dim, family.in_dim) and y.shape == (6 * family.out_dim,)
        assert y.dtype == mx.int32
        np.testing.assert_array_equal(np.bincount(np.array(y), minlength=2), [6, 6])


PARAM_RANGES = {
    "sine": {"amplitude": sine.AMPLITUDE_RANGE, "phase": sine.PHASE_RANGE},
    "linear": {"angle": toy2d.ANGLE_RANGE, "point": toy2d.LINEAR_POINT_RANGE},
    "xor": {
        "angle": toy2d.ANGLE_RANGE,
        "scale": toy2d.XOR_SCALE_RANGE,
        "center": toy2d.XOR_CENTER_RANGE,
    },
    "circles": {
        "center": toy2d.CIRCLES_CENTER_RANGE,
        "r_in": toy2d.CIRCLES_R_IN_RANGE,
        "gap": toy2d.CIRCLES_GAP_RANGE,
    },
    "spiral": {
        "center": toy2d.SPIRAL_CENTER_RANGE,
        "angle": toy2d.ANGLE_RANGE,
        "turns": toy2d.SPIRAL_TURNS_RANGE,
        "noise": toy2d.SPIRAL_NOISE_RANGE,
    },
}


@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_task_params_lie_in_their_documented_ranges(seed):
    keys = mx.random.split(mx.random.key(seed), 64)
    for name, ranges in PARAM_RANGES.items():
        params = mx.vmap(FAMILIES[name].sample_params)(keys)
        for field, (low, high) in ranges.items():
            values = np.array(params[field])
            assert values.min() >= low and values.max() <= high, (name, field)
            assert np.unique(values).size > 1, (name, field)  # really random across tasks
    circles = mx.vmap(FAMILIES["circles"].sample_params)(keys)
    width = np.array(circles["r_out"] - circles["r_in"] - circles["gap"])
    low, high = toy2d.CIRCLES_RING_WIDTH_RANGE
    assert width.min() >= low - EPS and width.max() <= high + EPS


# --- episodes: shapes, balance, keys --------------------------------------------------------


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    k_shot=st.integers(1, 6),
    query_size=st.integers(1, 6),
    n_tasks=st.integers(1, 5),
    which=st.sampled_from(range(len(FAMILY_SETS))),
    test=st.booleans(),
)
def test_episode_shapes_dtypes_and_exact_label_balance(
    seed, k_shot, query_size, n_tasks, which, test
):
    dist = make(FAMILY_SETS[which], k_shot=k_shot, query_size=query_size, num_train_tasks=5)
    sample = dist.sample_test if test else dist.sample_train
    episode = sample(mx.random.key(seed), n_tasks)
    assert isinstance(episode, Episode)
    sx, sy, qx, qy = episode
    assert sx.dtype == qx.dtype == mx.float32
    if dist.kind == "regression":
        assert sx.shape == (n_tasks, k_shot, 1) and sy.shape == (n_tasks, k_shot, 1)
        assert qx.shape == (n_tasks, query_size, 1) and qy.shape == (n_tasks, query_size, 1)
        assert sy.dtype == qy.dtype == mx.float32
    else:
        n_way = dist.out_dim
        assert sx.shape == (n_tasks, k_shot * n_way, 2) and sy.shape == (n_tasks, k_shot * n_way)
        assert qx.shape == (n_tasks, query_size * n_way, 2)
        assert qy.shape == (n_tasks, query_size * n_way)
        assert sy.dtype == qy.dtype == mx.int32
        for labels, per_class in ((sy, k_shot), (qy, query_size)):
            for row in np.array(labels):
                counts = np.bincount(row, minlength=n_way)
                np.testing.assert_array_equal(counts, [per_class] * n_way)
    # every family's inputs stay roughly within [-4, 4]^2 (5.5 bounds the documented ranges)
    assert np.abs(np.array(sx)).max() <= 5.5 and np.abs(np.array(qx)).max() <= 5.5


@pytest.mark.parametrize("families", FAMILY_SETS, ids=FAMILY_SET_IDS)
@pytest.mark.parametrize("num_train_tasks", [0, 4])
def test_same_key_same_episodes_and_different_keys_differ(families, num_train_tasks):
    dist = make(families, num_train_tasks=num_train_tasks)
    for sample in (dist.sample_train, dist.sample_test):
        a = sample(mx.random.key(3), 6)
        assert_episodes_equal(a, sample(mx.random.key(3), 6))
        b = sample(mx.random.key(4), 6)
        assert not np.array_equal(np.array(a.support_x), np.array(b.support_x))
        assert not np.array_equal(np.array(a.query_x), np.array(b.query_x))


def test_different_keys_give_different_tasks():
    dist = make(("sine",))
    a = dist.task_params(dist.sample_test_tasks(mx.random.key(1), 8))["sine"]
    b = dist.task_params(dist.sample_test_tasks(mx.random.key(2), 8))["sine"]
    amplitudes = np.concatenate([np.array(a["amplitude"]), np.array(b["amplitude"])])
    assert np.unique(amplitudes).size == 16  # all 16 tasks distinct, within and across keys
    # each task in a batch gets its own data, not the same inputs under a different curve
    support_x = np.array(dist.sample_train(mx.random.key(1), 8).support_x)
    assert np.unique(support_x[:, :, 0], axis=0).shape[0] == 8


@pytest.mark.parametrize("families", [("sine",), CLASSIFICATION], ids=["sine", "mixture"])
@pytest.mark.parametrize("k_shot, query_size", [(10, 10), (5, 20)])
def test_support_and_query_share_no_point(families, k_shot, query_size):
    dist = make(families, k_shot=k_shot, query_size=query_size, num_train_tasks=4)
    episode = dist.sample_train(mx.random.key(0), 8)
    for support, query in zip(np.array(episode.support_x), np.array(episode.query_x)):
        same = np.all(support[:, None, :] == query[None, :, :], axis=-1)
        assert not same.any()
        assert np.unique(support, axis=0).shape[0] == support.shape[0]


def test_sample_is_episodes_of_sampled_tasks():
    dist = make(num_train_tasks=7)
    key = mx.random.key(11)
    tasks_key, data_key = split2(key)
    assert_episodes_equal(
        dist.sample_train(key, 5), dist.episodes(dist.sample_train_tasks(tasks_key, 5), data_key)
    )
    assert_episodes_equal(
        dist.sample_test(key, 5), dist.episodes(dist.sample_test_tasks(tasks_key, 5), data_key)
    )


# --- compile and vmap -----------------------------------------------------------------------


@pytest.mark.parametrize("families", [("sine",), CLASSIFICATION], ids=["sine", "mixture"])
@pytest.mark.parametrize("num_train_tasks", [0, 5])
def test_sampling_inside_compile_matches_eager(families, num_train_tasks):
    dist = make(families, num_train_tasks=num_train_tasks)
    train = mx.compile(lambda key: dist.sample_train(key, 6))
    test = mx.compile(lambda key: dist.sample_test(key, 6))
    for seed in (0, 1):  # the second call reuses the compiled graph with a new key
        key = mx.random.key(seed)
        assert_episodes_equal(train(key), dist.sample_train(key, 6))
        assert_episodes_equal(test(key), dist.sample_test(key, 6))


def test_sampling_inside_vmap_matches_a_loop():
    dist = make(num_train_tasks=5)
    keys = mx.random.split(mx.random.key(2), 3)
    batched = mx.vmap(lambda key: dist.sample_train(key, 4))(keys)
    for i in range(3):
        one = dist.sample_train(keys[i], 4)
        assert_episodes_equal(Episode(*(field[i] for field in batched)), one)


# --- training pool and held-out tasks -------------------------------------------------------


def test_train_tasks_come_from_a_pool_of_num_train_tasks():
    dist = make(("sine",), num_train_tasks=3, seed=5)
    tasks = dist.sample_train_tasks(mx.random.key(0), 200)
    amplitudes = np.array(dist.task_params(tasks)["sine"]["amplitude"])
    assert np.unique(amplitudes).size == 3  # at most 3; and with 200 draws all 3 appear
    assert key_rows(tasks.keys) == key_rows(mx.random.split(mx.random.key(5), 3))
    # sample_train draws its data from those same pool tasks: each episode fits one pool curve
    episode = dist.sample_train(mx.random.key(1), 50)
    pool_params = dist.task_params(dist.train_pool())["sine"]
    curves = [{name: value[j] for name, value in pool_params.items()} for j in range(3)]
    x, y = episode.support_x, np.array(episode.support_y)
    matches = [
        [j for j, c in enumerate(curves) if np.allclose(y[i], sine_curve(c, x[i]), atol=1e-5)]
        for i in range(50)
    ]
    assert all(len(m) == 1 for m in matches)
    assert {m[0] for m in matches} == {0, 1, 2}


def test_pool_layout_and_mixture_family_ids():
    dist = make(CLASSIFICATION, num_train_tasks=10, seed=2)
    pool = dist.train_pool()
    assert isinstance(pool, Tasks)
    np.testing.assert_array_equal(np.array(pool.family_ids), np.arange(10) % 4)
    expected_keys = mx.random.split(mx.random.key(2), 10)
    np.testing.assert_array_equal(np.array(pool.keys), np.array(expected_keys))
    sampled = task_rows(dist.sample_train_tasks(mx.random.key(0), 100))
    assert sampled <= task_rows(pool) and len(sampled) > 1


@pytest.mark.parametrize("test_seed", [0, 1, 9])
def test_test_tasks_are_never_pool_tasks(test_seed):
    dist = make(num_train_tasks=200, seed=9)
    pool = key_rows(dist.train_pool().keys)
    test = key_rows(dist.sample_test_tasks(mx.random.key(test_seed), 200).keys)
    assert len(test) == 200 and not test & pool  # even with the pool's own seed as key
    family_ids = np.array(dist.sample_test_tasks(mx.random.key(test_seed), 200).family_ids)
    assert set(family_ids.tolist()) == {0, 1, 2, 3}


def test_infinite_pool_gives_fresh_train_tasks_distinct_from_test_tasks():
    dist = make(("sine",), num_train_tasks=0)
    key = mx.random.key(4)
    train = key_rows(dist.sample_train_tasks(key, 100).keys)
    train_later = key_rows(dist.sample_train_tasks(mx.random.key(5), 100).keys)
    test = key_rows(dist.sample_test_tasks(key, 100).keys)
    assert len(train) == 100 and not train & train_later and not train & test
    with pytest.raises(ConfigError, match="infinite"):
        dist.train_pool()


# --- geometry -------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**31 - 1), test=st.booleans())
def test_sine_targets_are_the_true_curve(seed, test):
    dist = make(("sine",), k_shot=8, query_size=8, num_train_tasks=0 if test else 20)
    tasks_key, data_key = split2(mx.random.key(seed))
    tasks = (dist.sample_test_tasks if test else dist.sample_train_tasks)(tasks_key, 4)
    episode = dist.episodes(tasks, data_key)
    params = dist.task_params(tasks)["sine"]
    amplitude = np.array(params["amplitude"])[:, None, None]
    phase = np.array(params["phase"])[:, None, None]
    for x, y in ((episode.support_x, episode.support_y), (episode.query_x, episode.query_y)):
        x, y = np.array(x), np.array(y)
        assert x.min() >= sine.X_RANGE[0] and x.max() <= sine.X_RANGE[1]
        np.testing.assert_allclose(y, amplitude * np.sin(x - phase), atol=1e-5)


def check_linear(p, x, y):
    normal = np.array([math.cos(p["angle"]), math.sin(p["angle"])])
    along = np.array([-normal[1], normal[0]])
    d, u = (x - p["point"]) @ normal, (x - p["point"]) @ along
    np.testing.assert_array_equal(np.sign(d), 2 * y - 1)
    assert np.abs(d).min() >= 0.1 - EPS and np.abs(d).max() <= 3 + EPS
    assert np.abs(u).max() <= 3 + EPS


def check_xor(p, x, y):
    c, s = math.cos(p["angle"]), math.sin(p["angle"])
    rel = x - p["center"]
    a = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]], axis=-1)
    np.testing.assert_array_equal(a[:, 0] * a[:, 1] > 0, y == 1)
    assert np.abs(a).min() >= 0.1 * p["scale"] - EPS and np.abs(a).max() <= p["scale"] + EPS


def check_circles(p, x, y):
    r = np.linalg.norm(x - p["center"], axis=-1)
    assert r[y == 0].max() <= p["r_in"] + EPS
    assert r[y == 1].min() >= p["r_in"] + p["gap"] - EPS and r[y == 1].max() <= p["r_out"] + EPS


def check_spiral(p, x, y):
    tau = np.linspace(*toy2d.SPIRAL_TAU_RANGE, 2001)
    for label in (0, 1):
        params = {k: mx.array(v) for k, v in p.items()}
        arm = np.array(toy2d.spiral_arm(params, mx.array(tau), mx.array(label)))
        gaps = np.linalg.norm(x[y == label][:, None, :] - arm[None], axis=-1).min(axis=1)
        assert gaps.max() <= 5 * p["noise"] + 0.01  # Gaussian noise: 5σ is never exceeded here


CHECKS = {
    "linear": check_linear, "xor": check_xor, "circles": check_circles, "spiral": check_spiral
}


@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_mixture_labels_match_each_familys_geometry(seed):
    dist = make(CLASSIFICATION, k_shot=10, query_size=10)
    tasks_key, data_key = split2(mx.random.key(seed))
    tasks = dist.sample_test_tasks(tasks_key, 12)
    episode = dist.episodes(tasks, data_key)
    params = dist.task_params(tasks)
    for i, family_id in enumerate(np.array(tasks.family_ids).tolist()):
        name = dist.families[family_id]
        p = {k: np.array(v[i]) for k, v in params[name].items()}
        for x, y in ((episode.support_x, episode.support_y), (episode.query_x, episode.query_y)):
            CHECKS[name](p, np.array(x[i]), np.array(y[i]))


def test_spiral_without_noise_lies_exactly_on_its_arms():
    params = toy2d.sample_spiral_params(mx.random.key(3))
    params = dict(params, noise=mx.array(0.0))
    x, y = toy2d.sample_spiral_data(params, mx.random.key(4), 50)
    rel = np.array(x - params["center"])
    radius = np.linalg.norm(rel, axis=-1)
    low, high = toy2d.SPIRAL_TAU_RANGE
    assert radius.min() >= 3 * low - EPS and radius.max() <= 3 * high + EPS
    tau = radius / toy2d.SPIRAL_RADIUS
    phi = 2 * np.pi * float(params["turns"]) * tau + np.array(y) * np.pi + float(params["angle"])
    direction = np.stack([np.cos(phi), np.sin(phi)], axis=-1)
    np.testing.assert_allclose(rel / radius[:, None], direction, atol=1e-3)


# --- configuration errors -------------------------------------------------------------------


def test_make_distribution_properties_and_a_bare_name():
    dist = make_distribution("sine", k_shot=2, query_size=3, num_train_tasks=0, seed=1)
    assert isinstance(dist, TaskDistribution)
    assert dist.families == ("sine",)
    assert (dist.kind, dist.in_dim, dist.out_dim) == ("regression", 1, 1)
    mixture = make(list(CLASSIFICATION))
    assert mixture.families == CLASSIFICATION and mixture.kind == "classification"
    assert (mixture.in_dim, mixture.out_dim, mixture.k_shot, mixture.query_size) == (2, 2, 3, 4)


@pytest.mark.parametrize(
    "families, pattern",
    [
        (("sinr",), r"family 'sinr'; did you mean 'sine'\?.*circles, linear, sine, spiral, xor"),
        (("linear", "xorr"), r"'xorr'; did you mean 'xor'"),
        (("banana",), r"unknown task family 'banana' \(valid names: circles, linear"),
        ((), r"families is empty"),
        (
            ("sine", "linear"),
            r"cannot mix task families 'sine' \(regression.*'linear' \(classification"
            r".*\[sine\] or \[linear, xor, circles, spiral\]",
        ),
        (("xor", "xor"), r"listed more than once: xor"),
        ((3,), r"must be strings"),
    ],
)
def test_bad_families_raise_config_error(families, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make(families)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"k_shot": 0}, r"k_shot must be an integer >= 1 .*got 0; set it to 1 or more"),
        ({"query_size": -2}, r"query_size must be an integer >= 1"),
        ({"k_shot": 2.5}, r"k_shot must be an integer"),
        ({"k_shot": True}, r"k_shot must be an integer"),
        ({"num_train_tasks": -1}, r"num_train_tasks must be an integer >= 0 .*0 = infinite"),
        ({"seed": -3}, r"seed must be an integer >= 0"),
    ],
)
def test_bad_sizes_raise_config_error(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make(**overrides)


def test_flat_class_layout_gives_the_same_episodes_as_the_padded_one():
    """Classes of uneven size stored flat (offsets + counts) sample exactly the episodes of the padded array."""
    import numpy as np

    from reptile_fn.episode import sample_class_episodes

    counts = np.array([7, 3, 12, 5, 9], dtype=np.int32)
    n_max = int(counts.max())
    rng = np.random.default_rng(0)
    padded = np.zeros((len(counts), n_max, 2), np.float32)
    rows = []
    for c, n in enumerate(counts):
        padded[c, :n] = rng.normal(size=(n, 2)) + 10 * c
        rows.append(padded[c, :n])
    flat = np.concatenate(rows)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    kw = dict(n_way=3, k_shot=2, query_size=1, counts=mx.array(counts))
    a = sample_class_episodes(mx.array(padded), mx.random.key(4), 50, **kw)
    b = sample_class_episodes(mx.array(flat), mx.random.key(4), 50, offsets=mx.array(offsets), n_max=n_max, **kw)
    for x, y in zip(a, b):
        assert mx.array_equal(x, y)
    # every drawn example is a real one (never padding): its value is one of the stored examples
    drawn = np.concatenate([np.array(b.support_x)[..., 0].ravel(), np.array(b.query_x)[..., 0].ravel()])
    assert np.isin(drawn, flat[:, 0]).all()
