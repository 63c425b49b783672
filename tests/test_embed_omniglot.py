"""Alphabet identification: task embeddings of an Omniglot run name the alphabet of held-out episodes."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from test_cli import _assert_user_error
from test_omniglot import make_zip
from typer.testing import CliRunner

from reptile_fn import config as C
from reptile_fn import datasets
from reptile_fn import run as R
from reptile_fn.cli import app
from reptile_fn.embed import alphabet_identification
from reptile_fn.errors import ConfigError
from reptile_fn.run.report import probe
from reptile_fn.tasks import omniglot as O

from conftest import quiet

runner = CliRunner()
TINY_OMNIGLOT = ["meta_iterations=2", "model.filters=4", "inner_steps=1", "tasks.query_size=1", "eval.episodes=2",
                 "eval.inner_steps=1", "eval.every=2", "eval.during_training_episodes=2", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def omniglot_run(tmp_path_factory):
    """A two-iteration conv4 run on a synthetic background zip of 12 alphabets × 5 characters: the alphabets
    protocol (no evaluation zip) holds out 2 whole alphabets for testing."""
    root = tmp_path_factory.mktemp("omniglot")
    make_zip(root / "data" / "images_background.zip", alphabets=12, characters=5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(datasets.CACHE_ENV, str(root / "cache"))
        mp.delenv(datasets.DATA_ENV, raising=False)
        cfg = C.load("omniglot_5w1s", [f"tasks.data_dir={root / 'data'}", *TINY_OMNIGLOT])
        R.train(cfg, root / "run", progress=False, log=quiet)
        yield root / "run" / R.CHECKPOINT, root


def test_test_alphabets_name_each_held_out_row(omniglot_run):
    _, root = omniglot_run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(datasets.CACHE_ENV, str(root / "cache"))
        tasks = O.make_omniglot(root / "data", n_way=5, k_shot=1, query_size=1)
        rotated = O.make_omniglot(root / "data", n_way=5, k_shot=1, query_size=1, rotate_test=True)
        held_out = O.load_split("test", root / "data")
    assert tasks.protocol == "alphabets"
    assert tasks.test_alphabets == tuple(held_out.alphabets) and len(set(held_out.alphabets)) == 2
    assert rotated.test_alphabets == tuple(a for a in held_out.alphabets for _ in range(4))  # class 4c + r
    with pytest.raises(ConfigError, match="one per row"):
        O.OmniglotTasks(tasks.train_images, tasks.test_images, 5, 1, 1, test_alphabets=("x",))


def _inked(p: float, n: int, seed: int) -> np.ndarray:
    """n characters × 20 drawings whose pixels are ink (0) with probability p."""
    return np.where(np.random.default_rng(seed).random((n, 20, 28, 28)) < p, 0, 255).astype(np.uint8)


def test_alphabets_differing_in_ink_are_told_apart_and_small_ones_left_out(omniglot_run):
    run, params, _, _ = R.load(omniglot_run[0])
    images = mx.array(np.concatenate([_inked(0.05, 6, 0), _inked(0.5, 6, 1), _inked(0.3, 3, 2)]))
    tasks = O.OmniglotTasks(images, images, 5, 1, 1, test_alphabets=("Faint",) * 6 + ("Dense",) * 6 + ("Tiny",) * 3)
    r = alphabet_identification(probe(run), params, tasks, k_shot=2, bank_tasks=20, query_tasks=20,
                                key=mx.random.key(0))
    assert r["families"] == ("Dense", "Faint") and r["left_out"] == ("Tiny",)
    assert set(np.unique(r["labels"])) <= {0, 1} and r["is_query"].sum() == 20
    assert r["accuracy"]["handcrafted"] == 1.0  # the images' mean ink alone names them
    one = O.OmniglotTasks(images[:9], images[:9], 5, 1, 1, test_alphabets=("Faint",) * 6 + ("Tiny",) * 3)
    with pytest.raises(ConfigError, match="two alphabets with at least n_way=5"):
        alphabet_identification(probe(run), params, one, k_shot=1, bank_tasks=4, query_tasks=2, key=mx.random.key(0))


def test_cli_embed_names_the_alphabet_of_an_omniglot_run(omniglot_run, tmp_path):
    checkpoint, root = omniglot_run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(datasets.CACHE_ENV, str(root / "cache"))
        result = runner.invoke(app, ["embed", "--checkpoint", str(checkpoint), "--tasks", "8", "--shots", "1",
                                     "--adapt-steps", "1", "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "alphabet identification" in result.stdout and "2 alphabets" in result.stdout
        assert "chance 50.0%" in result.stdout
        saved = json.loads((tmp_path / "embed.json").read_text())
        assert saved["what"] == "alphabet" and len(saved["families"]) == 2 and saved["query_tasks"] == 4
        assert (tmp_path / "task_embeddings.png").stat().st_size > 0
        _assert_user_error(runner.invoke(app, ["embed", "--checkpoint", str(checkpoint), "--family", "linear",
                                               "--out", str(tmp_path)]), "drop --family")
        _assert_user_error(runner.invoke(app, ["embed", "--checkpoint", str(checkpoint), "--shots", "20",
                                               "--out", str(tmp_path)]), "use at most 19 shots")


def test_way_sets_the_classes_of_embedded_omniglot_episodes(omniglot_run, tmp_path):
    checkpoint, root = omniglot_run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(datasets.CACHE_ENV, str(root / "cache"))
        args = ["embed", "--checkpoint", str(checkpoint), "--tasks", "6", "--shots", "1", "--adapt-steps", "0",
                "--out", str(tmp_path)]
        result = runner.invoke(app, [*args, "--way", "3"])
        assert result.exit_code == 0, result.output
        run, params, _, _ = R.load(checkpoint)
        r = alphabet_identification(probe(run), params, run.tasks, k_shot=1, bank_tasks=4, query_tasks=2,
                                    key=mx.random.key(1), n_way=3)
        assert r["n_way"] == 3 and len(r["families"]) == 2
        _assert_user_error(runner.invoke(app, [*args, "--way", "9"]), "the run's head has 5")


def test_a_bank_smaller_than_the_alphabets_is_refused(omniglot_run):
    run, params, _, _ = R.load(omniglot_run[0])
    with pytest.raises(ConfigError, match="1 bank tasks for 2 families or alphabets"):
        alphabet_identification(probe(run), params, run.tasks, k_shot=1, bank_tasks=1, query_tasks=1, key=mx.random.key(0))


def test_eval_data_of_its_own_training_characters_is_refused(omniglot_run, tmp_path):
    """An Omniglot run reads --data as its loader read the zips (nearest-neighbour, ink = 255), so a folder of PNGs
    copied out of its training zip gives the very drawings it meta-trained on, and is refused; characters it never
    saw are scored."""
    import zipfile

    checkpoint, root = omniglot_run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(datasets.CACHE_ENV, str(root / "cache"))
        train_chars = O.load_split("train", root / "data").characters
        with zipfile.ZipFile(root / "data" / "images_background.zip") as z:
            for name in z.namelist():
                alphabet, character = name.rsplit("/", 3)[-3:-1] if name.endswith(".png") else (None, None)
                if alphabet and f"{alphabet}/{character}" in train_chars[:6]:
                    target = tmp_path / "copied" / f"{alphabet}_{character}" / name.rsplit("/", 1)[-1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        assert len(list((tmp_path / "copied").iterdir())) == 6
        result = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "copied"),
                                     "--out", str(tmp_path / "ev")])
        assert result.exit_code == 2 and "6 of its 6 classes are at least a quarter images this run meta-trained on" in result.output, result.output
        make_zip(tmp_path / "new.zip", alphabets=2, characters=3, seed=7)
        result = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "new.zip"),
                                     "--episodes", "2", "--steps", "1", "--speed-steps", "0", "--out", str(tmp_path / "ev")])
        assert result.exit_code == 0, result.output
        assert "inverted" in result.output  # the PNGs are ink on white: turned over, as the loader did
