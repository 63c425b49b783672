"""Task embeddings: Fisher determinism, family structure, order invariance, retrieval, the embed command."""

import dataclasses
import json
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import _assert_user_error
from typer.testing import CliRunner

from reptile_fn import config as C
from reptile_fn import run as R
from reptile_fn.cli import app
from reptile_fn.embed import (
    cosine_distance,
    family_identification,
    handcrafted,
    nearest,
    pairwise,
    standardize,
)
from reptile_fn.embed.similarity import embed_support, fisher_embeddings, sample_tasks
from reptile_fn.run.report import probe

from conftest import TINY, quiet

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("embed_run")
    R.train(C.load(None, TINY), out, progress=False, log=quiet)
    return out / R.CHECKPOINT


@pytest.fixture(scope="module")
def loaded(tiny_run):
    run, params, _, _ = R.load(tiny_run)
    return run, params


def test_fisher_embedding_of_the_same_task_twice_is_identical(loaded):
    s, params = loaded
    _, ep = sample_tasks(s.tasks, mx.random.key(3), 2)
    a = fisher_embeddings(probe(s), params, ep.support_x, ep.support_y, adapt_steps=2)
    b = fisher_embeddings(probe(s), params, ep.support_x, ep.support_y, adapt_steps=2)
    assert np.array_equal(np.array(a), np.array(b))
    assert np.all(np.isfinite(np.array(a)))


@pytest.mark.parametrize("name", ["handcrafted", "fisher"])
def test_same_family_tasks_are_closer_than_across_families(loaded, name):


    s, params = loaded
    tasks = dataclasses.replace(s.tasks, k_shot=20)
    labels, ep = sample_tasks(tasks, mx.random.key(11), 80)
    e = embed_support(probe(s), params, ep.support_x, ep.support_y, n_classes=tasks.out_dim, adapt_steps=5)[name]
    (e,) = standardize(e)
    d = np.array(pairwise(e, e))
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert d[same & off_diagonal].mean() < d[~same].mean()


N = 12


@settings(max_examples=20, deadline=None)
@given(st.permutations(range(N)), st.integers(0, 2**16))
def test_handcrafted_features_ignore_the_order_of_the_support_examples(order, seed):
    x = mx.random.normal((N, 2), key=mx.random.key(seed))
    y = mx.array([i % 2 for i in range(N)], dtype=mx.int32)
    index = mx.array(order)
    a, b = handcrafted(x, y, 2), handcrafted(x[index], y[index], 2)
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**16))
def test_nearest_is_the_argmin_distance_entry(n_queries, n_keys, dim, seed):
    qk, kk = mx.random.split(mx.random.key(seed))
    queries = mx.random.normal((n_queries, dim), key=qk)
    keys = mx.random.normal((n_keys, dim), key=kk)
    idx = np.array(nearest(queries, keys))
    for i in range(n_queries):
        d = [float(cosine_distance(queries[i], keys[j])) for j in range(n_keys)]
        assert d[idx[i]] <= min(d) + 1e-6


def test_family_identification_returns_accuracies_and_plot_data(loaded):
    s, params = loaded
    r = family_identification(probe(s), s.tasks, params, k_shot=5, bank_tasks=20, query_tasks=10, key=mx.random.key(0))
    assert set(r["accuracy"]) == {"handcrafted", "fisher"}
    assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
    assert r["embeddings"]["handcrafted"].shape[0] == 30 and r["labels"].shape == (30,)
    assert r["is_query"].sum() == 10


def test_cli_embed_writes_the_png_and_prints_both_accuracies(tiny_run, tmp_path):
    result = runner.invoke(app, ["embed", "--checkpoint", str(tiny_run), "--tasks", "24", "--shots", "5",
                                 "--adapt-steps", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "handcrafted" in result.stdout and "fisher" in result.stdout
    assert (tmp_path / "task_embeddings.png").stat().st_size > 0
    saved = json.loads((tmp_path / "embed.json").read_text())
    assert set(saved["accuracy"]) == {"handcrafted", "fisher"}


def test_cli_embed_restricts_families(tiny_run, tmp_path):
    result = runner.invoke(app, ["embed", "--checkpoint", str(tiny_run), "--family", "linear", "--family", "circles",
                                 "--tasks", "10", "--adapt-steps", "0", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "linear, circles" in result.stdout and "chance 50.0%" in result.stdout


@pytest.mark.parametrize("args, needle", [(["--shots", "-3"], "--shots"), (["--family", "sine"], "sine"),
                                          (["--family", "nope"], "unknown task family")])
def test_cli_embed_bad_option_gives_one_clear_error(tiny_run, tmp_path, args, needle):
    result = runner.invoke(app, ["embed", "--checkpoint", str(tiny_run), "--out", str(tmp_path), *args])
    _assert_user_error(result, needle)


# the data root (holding omniglot/): $REPTILE_FN_TEST_DATA, default the project's ../shared/data, as tests/test_text.py
OMNIGLOT = Path(os.environ.get("REPTILE_FN_TEST_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


@pytest.mark.slow
@pytest.mark.skipif(not (OMNIGLOT / "omniglot" / "images_evaluation.zip").is_file(), reason="no Omniglot zips")
def test_alphabet_identification_of_the_shipped_inits_held_out_characters():
    from reptile_fn.embed.similarity import alphabet_identification

    s, params, _, _ = R.load("omniglot-5w1s", [f"tasks.data_dir={OMNIGLOT}"])
    assert s.tasks.protocol == "standard" and len(s.tasks.test_alphabets) == 423
    r = alphabet_identification(probe(s), params, s.tasks, k_shot=5, bank_tasks=100, query_tasks=40,
                                key=mx.random.key(5))
    assert len(r["families"]) + len(r["left_out"]) == len(set(s.tasks.test_alphabets))
    assert r["accuracy"]["fisher"] > 0.5  # chance: 1 / ~41
