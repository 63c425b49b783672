"""Adapter bank selection and the hypernetwork init (issue #9, part B)."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

from reptile_fn.embed import bank as B
from reptile_fn.embed import hyper as H
from reptile_fn.errors import CheckpointError, EmbeddingError
from reptile_fn.inner import InnerLoop, adapt
from reptile_fn.losses import cross_entropy
from reptile_fn.models import mlp
from reptile_fn.tasks import make_distribution


def leaves_equal(a, b) -> bool:
    fa, fb = dict(tree_flatten(a)), dict(tree_flatten(b))
    return fa.keys() == fb.keys() and all(mx.array_equal(fa[k], fb[k]).item() for k in fa)


def random_bank(seed: int, entries: int, dim: int, standardize: bool) -> B.AdapterBank:
    rng = np.random.default_rng(seed)
    params = {"layer": {"w": mx.array(rng.normal(size=(entries, 3, 2)).astype(np.float32))},
              "id": mx.arange(entries)}
    emb = mx.array(rng.normal(size=(entries, dim)).astype(np.float32))
    return B.from_entries(params, emb, mx.arange(entries), standardize=standardize)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), entries=st.integers(1, 12), dim=st.integers(2, 8), standardize=st.booleans())
def test_select_returns_the_entry_with_the_nearest_embedding(seed, entries, dim, standardize):
    bank = random_bank(seed, entries, dim, standardize)
    query = np.random.default_rng(seed + 1).normal(size=dim).astype(np.float32)
    z = (query - np.array(bank.shift)) / np.array(bank.scale)
    keys = np.array(bank.embeddings)
    cos = keys @ z / (np.linalg.norm(keys, axis=1) * np.linalg.norm(z) + 1e-12)
    want = int(np.argmax(cos))
    if np.sum(np.isclose(cos, cos[want], atol=1e-5)) > 1:
        return  # a numerical tie: either entry is right
    chosen = B.select(bank, mx.array(query))
    assert int(chosen["id"].item()) == want
    assert leaves_equal(chosen["layer"], {"w": bank.params["layer"]["w"][want]})
    # a batch of queries selects row by row
    batch = B.select(bank, mx.stack([mx.array(query), mx.array(query)]))
    assert batch["id"].tolist() == [want, want]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), dim=st.integers(1, 8))
def test_a_bank_of_one_entry_always_returns_it(seed, dim):
    bank = random_bank(seed, 1, dim, standardize=True)
    query = mx.array(np.random.default_rng(seed).normal(size=(3, dim)).astype(np.float32))
    assert B.select_index(bank, query).tolist() == [0, 0, 0]
    assert leaves_equal(B.select(bank, query[0]), {"layer": {"w": bank.params["layer"]["w"][0]}, "id": mx.array(0)})


def test_build_adapts_each_task_and_save_load_round_trip(tmp_path):
    model = mlp(2, 2, hidden=8)
    params = model.init(mx.random.key(0))
    x = mx.random.normal((3, 10, 2), key=mx.random.key(1))
    y = (x[..., 0] > 0).astype(mx.int32)
    bank = B.build(model.apply, cross_entropy, params, x, y, mx.random.normal((3, 4), key=mx.random.key(2)),
                   mx.array([0, 1, 2]), inner_lr=0.1, steps=3)
    assert B.size(bank) == 3 and bank.params["head"]["w"].shape == (3, 8, 2)
    for i in range(3):  # entry i is the init adapted on task i's data only
        want, _ = adapt(InnerLoop(lr=0.1, steps=3), model.apply, cross_entropy, params, (x[i], y[i]))[:2]
        got = {k: {n: a[i] for n, a in v.items()} for k, v in bank.params.items()}
        for (_, u), (_, v) in zip(tree_flatten(got), tree_flatten(want)):
            assert mx.allclose(u, v, atol=1e-5).item()
    path = B.save(tmp_path / "bank.safetensors", bank)
    again = B.load(path)
    assert leaves_equal(again.params, bank.params)
    for a, b in zip(again[1:], bank[1:]):
        assert mx.array_equal(a, b).item()
    with pytest.raises(CheckpointError, match="does not exist"):
        B.load(tmp_path / "missing.safetensors")
    with pytest.raises(EmbeddingError, match="does not match"):
        B.select(bank, mx.zeros((5,)))
    with pytest.raises(EmbeddingError, match="one adapted tree per embedding"):
        B.from_entries(bank.params, mx.zeros((2, 4)))
    mx.save_safetensors(str(tmp_path / "other.safetensors"), {"w": mx.zeros((2,))})
    with pytest.raises(CheckpointError, match="not an adapter bank"):
        B.load(tmp_path / "other.safetensors")


def test_hypernetwork_with_zero_output_layer_returns_the_meta_init():
    model = mlp(2, 2, hidden=8)
    params = model.init(mx.random.key(0))
    hyper = H.init(mx.random.key(1), 5, params, hidden=16)
    for z in mx.random.normal((4, 5), key=mx.random.key(2)):
        assert leaves_equal(H.generate(hyper, params, z), params)
    # a non-zero output layer moves it, by exactly the flat delta
    hyper["out"]["b"] = mx.arange(hyper["out"]["b"].size).astype(mx.float32)
    moved = H.generate(hyper, params, mx.zeros((5,)))
    flat = mx.concatenate([v.reshape(-1) for _, v in tree_flatten(moved)])
    base = mx.concatenate([v.reshape(-1) for _, v in tree_flatten(params)])
    assert mx.allclose(flat - base, hyper["out"]["b"], atol=1e-5).item()


def test_a_few_hypernetwork_steps_reduce_its_training_objective():
    tasks = make_distribution(["linear", "xor"], k_shot=5, query_size=10, num_train_tasks=64, seed=0)
    model = mlp(2, 2, hidden=16)
    params = model.init(mx.random.key(0))
    episodes = tasks.episodes(tasks.train_pool(), mx.random.key(1))
    ids = tasks.train_pool().family_ids
    z = mx.stack([ids == 0, ids == 1], axis=1).astype(mx.float32) * 2 - 1  # an informative embedding
    hyper = H.init(mx.random.key(2), 2, params, hidden=16)
    objective = H.objective(model.apply, cross_entropy, params, inner_lr=0.1, steps=2)
    init_state, step = H.make_step(model.apply, cross_entropy, params, inner_lr=0.1, steps=2, lr=1e-2)
    before = objective(hyper, z, episodes).item()
    state = init_state(hyper)
    for _ in range(30):
        hyper, state, _ = step(hyper, state, z, episodes)
    after = objective(hyper, z, episodes).item()
    assert after < before - 0.05, (before, after)


def test_select_with_another_distance_agrees_with_nearest():
    from reptile_fn.embed.select import nearest

    bank = random_bank(0, 9, 4, standardize=False)
    queries = mx.random.normal((7, 4), key=mx.random.key(3))

    def euclid(a, b):
        return mx.sum((a - b) ** 2)

    assert B.select_index(bank, queries, euclid).tolist() == nearest(queries, bank.embeddings, euclid).tolist()
