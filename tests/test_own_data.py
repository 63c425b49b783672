"""Your own data end to end: meta-train on a folder of images and on a CSV of sentences, score a run on data it
never trained on (`eval --data`), and `adapt` a run, or a shipped initialization, to new labelled examples."""

import csv
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from reptile_fn.cli import app
from reptile_fn.errors import DataError
from reptile_fn.run import load
from reptile_fn.run.adapt import adapt_to

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    monkeypatch.setenv("REPTILE_FN_CACHE", str(tmp_path / "cache"))


def cli(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def write_images(root: Path, classes: range, per: int, seed: int) -> Path:
    """RGB images of mixed sizes; class c is a colour (a seeded one per class) with a stripe of period c + 2."""
    rng = np.random.default_rng(seed)
    for c in classes:
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.random.default_rng(100 + c).integers(0, 255, size=3)
        for i in range(per):
            w, h = (int(v) for v in rng.integers(20, 90, size=2))
            pixels = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
            pixels[:, np.arange(w) % (c + 2) == 0] = 255 - base
            Image.fromarray(pixels).save(folder / f"img_{i}.{'png' if i % 2 else 'jpg'}")
    return root


TINY_IMAGES = ("--set", "meta_iterations=20", "--set", "tasks.n_way=2", "--set", "tasks.k_shot=1", "--set",
               "tasks.train_shots=2", "--set", "tasks.query_size=2", "--set", "eval.episodes=10", "--set",
               "eval.inner_steps=5", "--set", "eval.every=1000", "--set", "log_every=10", "--set", "checkpoint_every=10")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    data = write_images(root / "train_set", range(12), 8, 0)
    out = root / "run"
    cli("train", "--config", REPO / "configs" / "images_5w1s.yaml", "--set", f"tasks.path={data}", *TINY_IMAGES,
        "--out", out, "--no-progress")
    return root, out


def test_meta_training_on_an_image_folder_scores_held_out_classes(image_run):
    root, out = image_run
    summary = json.loads((out / "summary.json").read_text())
    meta = summary["eval"]["inits"]["meta"]["metric"]["mean"]
    assert summary["iteration"] == 20 and len(meta) == 6 and meta[-1] > 0.7  # 2-way: chance is 0.5
    run, _, _, _ = load(out / "checkpoint.safetensors")
    assert run.in_dim == (28, 28, 3) and run.tasks.n_way == 2  # RGB data: a 3-channel conv4


def test_eval_on_a_folder_the_run_never_saw(image_run, tmp_path):
    root, out = image_run
    other = write_images(tmp_path / "other", range(20, 26), 6, 1)
    text = cli("eval", "--checkpoint", out / "checkpoint.safetensors", "--data", other, "--episodes", 8, "--steps", 3,
               "--speed-steps", 0, "--baselines", "random", "--out", tmp_path / "eval")
    assert "meta" in text and "random" in text
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["inits"]["meta"]["episodes"] == 8


def test_a_cache_that_cannot_be_written_is_one_warning_line_and_the_command_goes_on(image_run, tmp_path, monkeypatch):
    """Not Python's 'path:line: UserWarning:' and the source line under it: one 'warning:' line, as the CLI's errors."""
    root, out = image_run
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("REPTILE_FN_CACHE", str(tmp_path / "not-a-folder"))
    other = write_images(tmp_path / "other", range(20, 26), 6, 1)
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--data", str(other), "--episodes", "4",
                                      "--steps", "2", "--speed-steps", "0", "--baselines", "none", "--out",
                                      str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "cache" in line and not line.startswith("decoding ")]
    assert len(warned) == 1 and warned[0].startswith("warning: could not write the images cache"), result.stderr
    assert "REPTILE_FN_CACHE" in warned[0] and "UserWarning" not in result.stderr


def test_eval_data_that_repeats_training_classes_is_refused_whatever_its_name(image_run, tmp_path):
    """A zip of the training folder, or a new folder holding a copy of one meta-training class under another name,
    would be scored as held-out: the images are compared, not the paths."""
    root, out = image_run
    zipped = shutil.make_archive(str(tmp_path / "train_set"), "zip", root / "train_set")
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--data", zipped, "--out", str(tmp_path / "e1")])
    assert result.exit_code == 2 and "at least a quarter images this run meta-trained on" in result.output, result.output
    assert "of its 12 classes" in result.output and not (tmp_path / "e1").exists()
    run, _, _, _ = load(out / "checkpoint.safetensors")
    mixed = write_images(tmp_path / "mixed", range(20, 25), 6, 1)
    shutil.copytree(root / "train_set" / run.tasks.train_classes[0], mixed / "renamed")
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--data", str(mixed), "--out", str(tmp_path / "e2")])
    assert result.exit_code == 2 and "1 of its 6 classes is at least a quarter" in result.output and "'renamed' (100%)" in result.output


def test_eval_data_compares_with_random_only_and_says_what_it_scored(image_run, tmp_path):
    """With --data every class is held out, so the training split is those classes too: transfer and head would be
    pretrained on the images they are scored on. They are left out by default and refused by name; compare labels the
    row with the data and the split it was scored on."""
    root, out = image_run
    other = write_images(tmp_path / "other", range(20, 26), 6, 1)
    cli("eval", "--checkpoint", out, "--data", other, "--episodes", 4, "--steps", 2, "--speed-steps", 0,
        "--out", tmp_path / "ev")
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(results["inits"]) == {"meta", "random"}
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--data", str(other), "--baselines",
                                      "random,transfer", "--out", str(tmp_path / "ev2")])
    assert result.exit_code == 2 and "transfer baseline is pretrained on the run's training classes" in result.output
    table = cli("compare", out, tmp_path / "ev")
    assert "| images other 2-way | all | 4 | 1 | meta |" in table and "| images train_set 2-way | test |" in table


def test_an_omniglot_init_takes_dark_ink_on_white_as_its_loader_gave_it(tmp_path):
    """Omniglot runs train on ink = 255 (the loader inverts the scans). Scans as they come (dark strokes on white) are
    inverted for them in eval --data and adapt, and the command says so; a set that is already light-on-dark is not."""
    rng = np.random.default_rng(0)
    for c in range(6):
        for i in range(3):
            pixels = np.full((28, 28), 255, np.uint8)
            pixels[rng.integers(0, 28, 40), rng.integers(0, 28, 40)] = 0
            pixels[4 * c:4 * c + 4, :] = 0  # a stroke per class
            (tmp_path / "scans" / f"char{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / "scans" / f"char{c}" / f"{i}.png")
            (tmp_path / "inked" / f"char{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(255 - pixels).save(tmp_path / "inked" / f"char{c}" / f"{i}.png")
    run, _, _, _ = load("omniglot-5w1s", data=tmp_path / "scans")
    assert run.tasks.inverted and run.cfg.tasks.invert == "light"
    assert not load("omniglot-5w1s", data=tmp_path / "inked")[0].tasks.inverted
    a = np.array(load("omniglot-5w1s", data=tmp_path / "scans")[0].tasks.test_images)
    b = np.array(load("omniglot-5w1s", data=tmp_path / "inked")[0].tasks.test_images)
    np.testing.assert_array_equal(a, b)  # the model sees the same pixels either way
    text = cli("eval", "--checkpoint", "omniglot-5w1s", "--data", tmp_path / "scans", "--episodes", 2, "--steps", 1,
               "--speed-steps", 0, "--out", tmp_path / "ev")
    assert "were inverted" in text
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["inverted_images"] == 18
    pred, _, _ = adapt_to("omniglot-5w1s", tmp_path / "scans", tmp_path / "scans", steps=1)
    assert pred.inverted == 36  # support and query
    assert not adapt_to("omniglot-5w1s", tmp_path / "inked", tmp_path / "inked", steps=1)[0].inverted
    # image by image: scanned support, inked query (or a set of both) end up one way, and score the same
    mixed, _, _ = adapt_to("omniglot-5w1s", tmp_path / "scans", tmp_path / "inked", steps=1)
    assert mixed.inverted == 18 and mixed.accuracy == pred.accuracy
    np.testing.assert_allclose(mixed.probabilities, pred.probabilities, atol=1e-6)


def test_adapt_labels_new_images_and_writes_predictions_and_parameters(image_run, tmp_path):
    root, out = image_run
    support = write_images(tmp_path / "support", range(30, 32), 3, 2)
    query = write_images(tmp_path / "query", range(30, 32), 5, 3)
    text = cli("adapt", "--checkpoint", out / "checkpoint.safetensors", "--support", support, "--query", query,
               "--out", tmp_path / "pred")
    assert "accuracy on the labelled query items" in text
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert len(rows) == 10 and set(rows[0]) == {"item", "predicted", "label", "p(class_30)", "p(class_31)"}
    assert all(abs(float(r["p(class_30)"]) + float(r["p(class_31)"]) - 1) < 1e-4 for r in rows)
    payload = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert payload["accuracy"] >= 0.8 and payload["classes"] == ["class_30", "class_31"]
    adapted, params, _, _ = load(tmp_path / "pred" / "adapted.safetensors", with_tasks=False)
    before, base, _, _ = load(out / "checkpoint.safetensors", with_tasks=False)
    assert adapted.cfg == before.cfg and not np.array_equal(np.array(params["head"]["w"]), np.array(base["head"]["w"]))
    one = sorted((query / "class_31").iterdir())[0]  # one image to label: the same prediction as within its folder
    cli("adapt", "--checkpoint", out / "checkpoint.safetensors", "--support", support, "--query", one, "--out",
        tmp_path / "one")
    [row] = list(csv.DictReader((tmp_path / "one" / "predictions.csv").open()))
    same = next(r for r in rows if r["item"] == f"class_31/{one.name}")
    assert row["item"] == one.name and row["predicted"] == same["predicted"] and "label" not in row
    assert abs(float(row["p(class_31)"]) - float(same["p(class_31)"])) < 1e-4


def test_adapt_a_plain_folder_and_the_python_function(image_run, tmp_path):
    root, out = image_run
    support = write_images(tmp_path / "support", range(30, 32), 3, 2)
    flat = tmp_path / "to_label"
    flat.mkdir()
    for i, p in enumerate(sorted(write_images(tmp_path / "q", range(31, 32), 3, 4).rglob("*.*"))):
        Image.open(p).save(flat / f"item_{i}.png")
    pred, run, _ = adapt_to(out / "checkpoint.safetensors", support, flat, steps=8)
    assert pred.items == ("item_0.png", "item_1.png", "item_2.png") and pred.labels is None and pred.accuracy is None
    assert pred.probabilities.shape == (3, 2) and pred.steps == 8
    assert [pred.classes[i] for i in pred.predicted] == ["class_31"] * 3
    # a labelled query of a single class is scored (it is not a few-shot data set: one class is enough) ...
    one = tmp_path / "one"
    shutil.copytree(tmp_path / "q" / "class_31", one / "class_31")
    pred, _, _ = adapt_to(out / "checkpoint.safetensors", support, one, steps=8)
    assert pred.labels is not None and pred.accuracy == 1.0 and len(pred.items) == 3
    # a single folder that is no support class (a typo) is an error, as with two folders ...
    shutil.copytree(tmp_path / "q" / "class_31", tmp_path / "typo" / "class_3l")
    with pytest.raises(DataError, match=r"classes the support set does not \('class_3l'\).*directly in the query folder"):
        adapt_to(out / "checkpoint.safetensors", support, tmp_path / "typo", steps=1)
    # ... and a zip of a plain folder is the folder's images to label, not a class named after the folder
    zipped = shutil.make_archive(str(tmp_path / "to_label"), "zip", tmp_path, "to_label")
    pred, _, _ = adapt_to(out / "checkpoint.safetensors", support, zipped, steps=8)
    assert pred.labels is None and len(pred.items) == 3


def test_a_shipped_omniglot_init_adapts_to_colour_images(tmp_path):
    support = write_images(tmp_path / "support", range(40, 43), 2, 5)
    query = write_images(tmp_path / "query", range(40, 43), 3, 6)
    pred, run, _ = adapt_to("omniglot-5w1s", support, query, steps=20)
    assert run.in_dim == (28, 28, 1) and pred.probabilities.shape == (9, 3)  # RGB turned gray for the 1-channel init
    assert pred.accuracy > 1 / 3
    assert pred.inverted == 0  # colour images have no light background: inverting some would merge classes


def test_eval_data_says_when_it_cannot_check_against_the_training_data(tmp_path):
    data = write_images(tmp_path / "train_set", range(10), 4, 0)
    out = tmp_path / "run"
    cli("train", "--config", REPO / "configs" / "images_5w1s.yaml", "--set", f"tasks.path={data}", *TINY_IMAGES,
        "--set", "meta_iterations=2", "--set", "checkpoint_every=2", "--set", "tasks.train_shots=1", "--out", out,
        "--no-progress")
    shutil.rmtree(data)  # the training data is gone (another machine): nothing to compare with, and it says so
    other = write_images(tmp_path / "other", range(20, 24), 4, 1)
    text = cli("eval", "--checkpoint", out, "--data", other, "--episodes", 2, "--steps", 1, "--speed-steps", 0,
               "--out", tmp_path / "ev")
    assert "warning: --data was not compared with the run's training data" in text


def test_adapt_to_more_classes_than_the_init_was_meta_trained_on(image_run, tmp_path):
    """A 2-way init adapts to 3 classes: its head grows (new outputs start at the mean of the meta-learned
    ones), and the adapted checkpoint reloads as a 3-way model."""
    root, out = image_run
    support = write_images(tmp_path / "support", range(50, 53), 3, 7)
    query = write_images(tmp_path / "query", range(50, 53), 4, 8)
    pred, run, state = adapt_to(out / "checkpoint.safetensors", support, query, steps=10)
    assert pred.probabilities.shape == (12, 3) and pred.accuracy > 0.5  # chance: 1/3
    assert pred.params["head"]["w"].shape[-1] == 3 and run.cfg.tasks.n_way == 3
    from reptile_fn.run.adapt import save_predictions

    save_predictions(pred, run, state, tmp_path / "pred", source="test")
    again, params, _, _ = load(tmp_path / "pred" / "adapted.safetensors", with_tasks=False)
    assert again.cfg.tasks.n_way == 3 and np.array_equal(np.array(params["head"]["w"]), np.array(pred.params["head"]["w"]))


def test_adapt_errors_name_the_problem(image_run, tmp_path):
    root, out = image_run
    two = write_images(tmp_path / "two", range(50, 52), 2, 7)
    other = write_images(tmp_path / "other_classes", range(60, 62), 2, 7)
    result = CliRunner().invoke(app, ["adapt", "--checkpoint", str(out / "checkpoint.safetensors"), "--support",
                                      str(two), "--query", str(other), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "classes the support set does not" in result.output
    result = CliRunner().invoke(app, ["adapt", "--checkpoint", str(out / "checkpoint.safetensors"), "--support",
                                      str(tmp_path / "missing"), "--query", str(other), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "missing" in result.output
    csv_file = write_csv(tmp_path / "sentences.csv", ["weather", "music"], 2, 0)
    result = CliRunner().invoke(app, ["adapt", "--checkpoint", str(out / "checkpoint.safetensors"), "--support",
                                      str(csv_file), "--query", str(other), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "is a text file, but this is an image run" in result.output
    one = next(p for p in sorted(other.rglob("*")) if p.is_file())  # one image: a query may be one, a support set not
    result = CliRunner().invoke(app, ["adapt", "--checkpoint", str(out / "checkpoint.safetensors"), "--support",
                                      str(one), "--query", str(one), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and f"{one} is a file but not a .zip; give a folder" in result.output, result.output
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--data", str(root / "train_set"),
                                      "--out", str(tmp_path / "p")])  # the folder the run meta-trained on
    assert result.exit_code == 2 and "is the data this run meta-trained on" in result.output
    assert not (tmp_path / "p").exists()  # nothing written on failure


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (Linux)")
def test_adapt_s_out_folder_that_cannot_be_made_is_named_before_the_work(image_run, tmp_path, monkeypatch):
    """os.access says yes to root in /proc: `--out /proc/foo` decoded and adapted, then failed naming no option."""
    from reptile_fn.run import adapt as A

    root, out = image_run
    two = write_images(tmp_path / "two", range(50, 52), 2, 7)
    monkeypatch.setattr(A, "adapt_to", lambda *a, **k: pytest.fail("adapted before --out was checked"))
    result = CliRunner().invoke(app, ["adapt", "--checkpoint", str(out / "checkpoint.safetensors"), "--support",
                                      str(two), "--query", str(two), "--out", "/proc/reptile-fn-out"])
    assert result.exit_code == 2 and "--out /proc/reptile-fn-out: /proc is not writable" in result.output, result.output


def test_eval_data_with_another_image_size_says_the_run_s_size_is_fixed(image_run, tmp_path):
    """It was a shape mismatch of the head that listed the settings --data adds itself as the user's."""
    root, out = image_run
    other = write_images(tmp_path / "other", range(60, 63), 3, 7)
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--data", str(other), "--set",
                                      "model.image_size=64", "--out", str(tmp_path / "e")])
    assert result.exit_code == 2, result.output
    assert "--set model.image_size=64: with --data, model.image_size is the run's (" in result.output, result.output
    assert "drop the --set" in result.output and "head.w" not in result.output


def test_eval_of_a_run_whose_training_data_moved_names_its_tasks_path_and_the_fix(image_run, tmp_path):
    """It said only 'image data set … not found', not that it was the run's own path, nor --set tasks.path."""
    from mlx.utils import tree_unflatten

    from reptile_fn import checkpoint as ck

    root, out = image_run
    arrays, meta = ck.load(out / "checkpoint.safetensors")
    part = lambda p: tree_unflatten([(k[len(p) + 1:], v) for k, v in arrays.items() if k.startswith(p + ".")])  # noqa: E731
    meta["config"]["tasks"]["path"] = str(tmp_path / "gone")
    ck.save(tmp_path / "run" / "checkpoint.safetensors", part("params"), part("state"), meta)
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2, result.output
    assert f"meta-trained on {tmp_path / 'gone'} (its tasks.path), which is not there any more" in result.output
    assert "--set tasks.path=NEW_PLACE" in result.output
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "2", "--steps", "1",
                                      "--speed-steps", "0", "--baselines", "none", "--set",
                                      f"tasks.path={root / 'train_set'}", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output  # the fix it names works


def test_adapt_warns_when_the_query_is_the_support_set(image_run, tmp_path):
    """Its accuracy is training accuracy; eval --data refuses such overlap, adapt printed it as if new."""
    root, out = image_run
    two = write_images(tmp_path / "two", range(50, 52), 2, 7)
    result = CliRunner().invoke(app, ["adapt", "--checkpoint", str(out / "checkpoint.safetensors"), "--support",
                                      str(two), "--query", str(two), "--steps", "1", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "is the support set" in warned[0] and "training accuracy" in warned[0], result.output


def test_adapt_refuses_more_classes_than_a_head_may_have(image_run, tmp_path, monkeypatch):
    """A support set of 1,001 classes (a label column of texts or ids, say) would widen the head to 1,001 outputs
    without a word; it is refused with the limit, which REPTILE_FN_NO_LIMITS lifts."""
    from PIL import Image

    _, out = image_run
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    for c in range(1001):
        (tmp_path / "many" / f"c{c}").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "many" / f"c{c}" / "x.png")
    result = CliRunner().invoke(app, ["adapt", "--checkpoint", str(out), "--support", str(tmp_path / "many"),
                                      "--query", str(tmp_path / "many" / "c0"), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "has 1,001 classes, and the head needs an output for each" in result.stderr
    assert "REPTILE_FN_NO_LIMITS=1" in result.stderr and not (tmp_path / "p").exists()


def test_out_inside_the_data_a_command_reads_is_refused(image_run, tmp_path):
    """What adapt, eval or train wrote into the data folder would be a class of it next time (curves.png as a sixth
    class, an empty 'preds' class failing every later run): --out there is refused before anything is written."""
    root, out = image_run
    data = write_images(tmp_path / "data", range(40, 46), 3, 5)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for args in (["adapt", "--checkpoint", out, "--support", data, "--query", data / "class_40", "--out", data / "preds"],
                 ["adapt", "--checkpoint", out, "--support", write_images(tmp_path / "other", range(40, 42), 3, 6),
                  "--query", data / "class_40", "--out", data / "class_40" / "p"],
                 ["eval", "--checkpoint", out, "--data", data, "--out", data / "ev"],
                 ["train", "--config", REPO / "configs" / "images_5w1s.yaml", "--set", f"tasks.path={data}",
                  "--out", data / "run"]):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 2 and "data this command reads" in result.stderr, (args, result.output)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_a_class_folder_named_in_another_encoding_is_one_error(image_run, tmp_path):
    root, out = image_run
    data = write_images(tmp_path / "data", range(40, 43), 3, 5)
    os.rename(data / "class_40", os.fsencode(data) + b"/class_\xff")  # Latin-1 bytes, not UTF-8
    result = CliRunner().invoke(app, ["adapt", "--checkpoint", str(out), "--support", str(data), "--query",
                                      str(data / "class_41"), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "has a name that is not valid UTF-8" in result.stderr, result.output


def test_resume_with_the_command_that_started_the_run_and_a_relative_data_path(tmp_path, monkeypatch):
    """The run records tasks.path absolute; the same command with --resume (a relative path) is the same config."""
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "imgs", range(12), 6, 0)
    args = ["train", "--config", REPO / "configs" / "images_5w1s.yaml", "--set", "tasks.path=imgs", *TINY_IMAGES,
            "--out", "run", "--no-progress"]
    cli(*args)
    assert "trained 0 meta-iterations" not in cli(*args, "--resume")  # a finished run: its figures, no refusal
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iteration"] == 20


def test_training_shots_the_data_cannot_give_name_train_shots(image_run):
    root, _ = image_run
    result = CliRunner().invoke(app, ["train", "--config", str(REPO / "configs" / "images_5w1s.yaml"), "--set",
                                      f"tasks.path={root / 'train_set'}", *TINY_IMAGES, "--set", "tasks.train_shots=7",
                                      "--out", str(root / "bad")])
    assert result.exit_code == 2 and "tasks.train_shots = 7 with query_size = 2 needs 9" in result.output
    assert "lower tasks.train_shots" in result.output


# --- sentences --------------------------------------------------------------------------------------

TOPICS = {"weather": "rain sunny forecast cold snow", "music": "song play album band volume",
          "food": "recipe cook dinner pasta bake", "travel": "flight hotel trip airport ticket",
          "bank": "balance transfer account card deposit", "health": "doctor fever medicine appointment pain",
          "sports": "score match team goal league", "tech": "laptop update wifi password phone",
          "home": "lights thermostat door vacuum garden", "shopping": "order delivery cart price refund"}


def write_csv(path: Path, labels, per: int, seed: int, *, with_labels: bool = True,
              template: str = "can you help me with the {} and the {} please") -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"] if with_labels else ["text"])
        for label in labels:
            words = TOPICS[label].split()
            seen = set()
            while len(seen) < per:  # distinct sentences: a repeated one would be support and query at once
                text = template.format(rng.choice(words), rng.choice(words))
                text += "" if text not in seen else f" {rng.choice(['now', 'today', 'again', 'soon'])}"
                if text not in seen:
                    seen.add(text)
                    w.writerow([text, label] if with_labels else [text])
    return path


def test_csv_meta_training_eval_and_adapt(tmp_path):
    pytest.importorskip("tokenizers")
    data = write_csv(tmp_path / "train.csv", list(TOPICS), 12, 0)
    out = tmp_path / "run"
    cli("train", "--config", REPO / "configs" / "csv_5w5s_lora.yaml", "--set", f"tasks.path={data}", "--set",
        "meta_iterations=2", "--set", "tasks.n_way=3", "--set", "tasks.k_shot=2", "--set", "tasks.query_size=2",
        "--set", "tasks.test_fraction=0.3", "--set", "tasks.val_fraction=0.1", "--set", "eval.episodes=3", "--set",
        "eval.inner_steps=2", "--set", "inner_steps=1", "--set", "log_every=1", "--set", "checkpoint_every=2",
        "--out", out, "--no-progress")
    assert json.loads((out / "summary.json").read_text())["eval"]["inits"]["meta"]["episodes"] == 3
    (tmp_path / "copy.csv").write_bytes(data.read_bytes())  # a copy of the training data is not held out
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--data", str(tmp_path / "copy.csv"), "--out",
                                      str(tmp_path / "ev0")])
    assert result.exit_code == 2 and "is the data this run meta-trained on" in result.output, result.output
    reused = write_csv(tmp_path / "reused.csv", ["weather", "music", "food", "bank"], 5, 1)  # training's sentences
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--data", str(reused), "--out",
                                      str(tmp_path / "ev1")])
    assert result.exit_code == 2 and "at least a quarter sentences this run meta-trained on" in result.output, result.output
    other = write_csv(tmp_path / "other.csv", ["weather", "music", "food", "bank"], 5, 1,
                      template="i would like to ask about {} or maybe {} today")
    cli("eval", "--checkpoint", out / "checkpoint.safetensors", "--data", other, "--episodes", 3, "--steps", 1,
        "--speed-steps", 0, "--baselines", "lora0", "--out", tmp_path / "eval")
    support = write_csv(tmp_path / "support.csv", ["weather", "music", "food"], 3, 2)
    query = write_csv(tmp_path / "query.csv", ["weather", "music", "food"], 4, 3)
    unlabelled = write_csv(tmp_path / "items.csv", ["music", "food"], 1, 4, with_labels=False)
    pred, _, _ = adapt_to(out / "checkpoint.safetensors", support, query, steps=5)
    assert pred.classes == ("food", "music", "weather") and pred.accuracy > 0.6  # chance: 1/3
    text = cli("adapt", "--checkpoint", out / "checkpoint.safetensors", "--support", support, "--query", unlabelled,
               "--out", tmp_path / "pred")
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert [r["item"] for r in rows] == ["line 2", "line 3"] and "label" not in rows[0] and "labelled 2 items" in text
    assert "inverted_images" not in json.loads((tmp_path / "pred" / "predictions.json").read_text())  # text: no images
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "pred")])
    assert result.exit_code == 2 and "holds the predictions of `reptile-fn adapt`" in result.output
    one_class = write_csv(tmp_path / "one.csv", ["music"], 3, 5)
    for support_path, needle in ((one_class, "has one class only ('music')"), (tmp_path, "is a folder, but this is a text run")):
        result = CliRunner().invoke(app, ["adapt", "--checkpoint", str(out), "--support", str(support_path), "--query",
                                          str(query), "--out", str(tmp_path / "bad")])
        assert result.exit_code == 2 and needle in result.output, result.output


def test_a_run_whose_tasks_rebuild_the_head_evaluates_at_another_way(tmp_path):
    """With prototype heads every task builds its head from its support set, so a run trained on 2-way tasks loads
    and scores 3-way ones; a run with a meta-learned head keeps refusing another way (its head has 2 outputs)."""
    from reptile_fn.errors import CheckpointError
    from mlx.utils import tree_flatten

    data = write_images(tmp_path / "train_set", range(20), 6, 0)  # test split: 4 classes
    out = tmp_path / "proto"
    cli("train", "--config", REPO / "configs" / "images_5w1s.yaml", "--set", f"tasks.path={data}", *TINY_IMAGES,
        "--set", "peft.head=prototypes", "--out", out, "--no-progress")
    run2, p2, _, _ = load(out / "checkpoint.safetensors")
    run3, p3, _, _ = load(out / "checkpoint.safetensors", ["tasks.n_way=3"])
    f2, f3 = dict(tree_flatten(p2)), dict(tree_flatten(p3))
    assert f3["head.w"].shape[-1] == 3 and f2["head.w"].shape[-1] == 2 and run3.tasks.n_way == 3
    for k in f2:
        if not k.startswith("head."):
            np.testing.assert_array_equal(np.array(f3[k]), np.array(f2[k]), err_msg=k)
    text = cli("eval", "--checkpoint", out / "checkpoint.safetensors", "--set", "tasks.n_way=3", "--episodes", 6, "--steps", 2, "--speed-steps", 0, "--out", tmp_path / "eval")
    acc = json.loads((tmp_path / "eval" / "results.json").read_text())["inits"]["meta"]["metric"]["mean"]
    assert "meta" in text and acc[0] > 0.5  # step 0 is the prototype classifier: 3-way chance is 1/3

    plain = tmp_path / "plain"
    cli("train", "--config", REPO / "configs" / "images_5w1s.yaml", "--set", f"tasks.path={data}", *TINY_IMAGES,
        "--out", plain, "--no-progress")
    with pytest.raises(CheckpointError, match="meta-trained 2-way: its head has 2 outputs.*`reptile-fn adapt`"):
        load(plain / "checkpoint.safetensors", ["tasks.n_way=3"])


def test_a_relative_data_path_is_recorded_absolute(tmp_path, monkeypatch):
    """A run records where its data was, so `eval` and `--resume` from another folder read the same files (a
    relative tasks.path silently pointed at whatever had that name there)."""
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "data", range(12), 5, 1)
    cli("train", "--config", REPO / "configs" / "images_5w1s.yaml", "--set", "tasks.path=data", *TINY_IMAGES,
        "--set", "meta_iterations=2", "--out", "run", "--no-progress")
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["tasks"]["path"]
    assert recorded == str((tmp_path / "data").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no data/ here: eval still finds the run's own
    cli("eval", "--checkpoint", tmp_path / "run", "--episodes", "3", "--baselines", "random", "--speed-steps", "0",
        "--out", tmp_path / "ev")
