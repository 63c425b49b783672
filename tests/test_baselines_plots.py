"""Baselines, adaptation speed, figures, and the eval/compare commands."""

import json

import mlx.core as mx
import numpy as np
import pytest
from typer.testing import CliRunner

from reptile_fn import config as C
from reptile_fn import plots
from reptile_fn import run as R
from reptile_fn.run import report
from reptile_fn.baselines import BASELINES, make_baselines, pretrain, steps_to_reach
from reptile_fn.cli import app
from reptile_fn.errors import ConfigError
from reptile_fn.evaluate import per_episode_curves
from reptile_fn.inner import InnerLoop
from reptile_fn.losses import mse
from reptile_fn.models import mlp
from reptile_fn.tasks import make_distribution

from helpers import max_abs_diff

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["meta_iterations=30", "eval.episodes=20", "eval.every=10", "log_every=5", "checkpoint_every=10",
        "model.hidden=16"]


def test_steps_to_reach():
    assert steps_to_reach([0.5, 0.6, 0.8, 0.9], 0.8, higher_is_better=True) == 2
    assert steps_to_reach([3.0, 2.0, 1.0], 1.5, higher_is_better=False) == 2
    assert steps_to_reach([0.5, 0.6], 0.9, higher_is_better=True) is None


def test_adaptation_speed_on_hand_made_curves():
    def curve(values):
        return {"steps": list(range(len(values))), "metric": {"mean": values, "ci95": [0] * len(values)}}

    ev = {"metric": "accuracy", "inits": {"meta": curve([0.5, 0.8, 0.9, 0.9, 0.9]),
                                         "slow": curve([0.5, 0.6, 0.7, 0.8, 0.9]),
                                         "never": curve([0.5] * 5)}}
    speed = report.adaptation_speed(ev, 2)
    assert speed["target"] == 0.9 and speed["meta_steps"] == 2
    assert speed["inits"]["slow"] == {"steps": 4, "reached": True, "ratio": 2.0, "steps_from": 4, "ratio_range": [2.0, 2.0]}
    assert speed["inits"]["never"]["reached"] is False and speed["inits"]["never"]["ratio"] == 2.0
    # a sparse grid past step 2 (0, 1, 2, 5, 10): reached at recorded step 10 means somewhere in 6..10
    sparse = {"metric": "accuracy", "inits": {name: dict(c, steps=[0, 1, 2, 5, 10]) for name, c in ev["inits"].items()}}
    speed = report.adaptation_speed(sparse, 2)
    assert speed["inits"]["slow"]["steps"] == 10 and speed["inits"]["slow"]["steps_from"] == 6
    table = report.format_speed(speed)
    assert "6-10 steps" in table and "3.0-5.0x" in table and ">10 steps" in table  # 6/2 .. 10/2: meta took 2
    # meta's own count a range too: the ratio's ends combine both ranges, and meta's row is 1.0x
    ev = {"metric": "accuracy", "inits": {"meta": dict(curve([0.5, 0.6, 0.7, 0.9, 0.9]), steps=[0, 1, 2, 5, 10]),
                                         "fast": dict(curve([0.5, 0.95, 0.95, 0.95, 0.95]), steps=[0, 1, 2, 5, 10])}}
    speed = report.adaptation_speed(ev, 10)
    assert speed["inits"]["meta"]["ratio_range"] == [1.0, 1.0] and speed["inits"]["fast"]["ratio_range"] == [1 / 5, 1 / 3]
    table = report.format_speed(speed)
    assert " 1.0x" in table and "≤" not in table.split("fast")[0].split("meta")[-1] and "0.2-0.4x" in table  # 1/5 .. 1/3, widened


def test_pretraining_lowers_the_pooled_loss_and_is_deterministic():
    # a pool of one task: pooled training must fit that task (with many tasks the pooled optimum of sine
    # is close to predicting 0, which is why this baseline is weak there)
    tasks = make_distribution("sine", k_shot=10, query_size=10, num_train_tasks=1, seed=0)
    model = mlp(1, 1, hidden=16)
    key = mx.random.key(1)
    trained = pretrain(model, mse, tasks, key, iterations=300)
    again = pretrain(model, mse, tasks, key, iterations=300)
    ep = tasks.sample_train(mx.random.key(2), 20)
    x, y = ep.query_x.reshape(-1, 1), ep.query_y.reshape(-1, 1)
    start = model.init(mx.random.split(key)[0])
    assert float(mse(model.apply(trained, x), y)) < 0.5 * float(mse(model.apply(start, x), y))
    assert max_abs_diff(trained, again) == 0.0
    base = make_baselines(BASELINES, model, mse, tasks, random_key=mx.random.key(3), transfer_key=key,
                          pretrain_iterations=300)
    assert base["transfer"].trainable is None and base["head"].trainable("head.w") and not base["head"].trainable("layer0.w")
    assert base["head"].params is base["transfer"].params
    with pytest.raises(ConfigError, match="unknown baseline 'finetune'"):
        make_baselines(("finetune",), model, mse, tasks, random_key=key, transfer_key=key)


def test_a_perfect_init_scores_at_least_as_well_as_random_on_its_own_task():
    tasks = make_distribution("sine", k_shot=10, query_size=20, num_train_tasks=0, seed=0)
    model = mlp(1, 1, hidden=32)
    one = tasks.sample_test_tasks(mx.random.key(5), 1)
    same_task = type(one)(mx.repeat(one.family_ids, 50), mx.repeat(one.keys, 50, axis=0))
    fit_data = tasks.episodes(type(one)(one.family_ids, one.keys), mx.random.key(6))
    x = mx.concatenate([fit_data.support_x[0], fit_data.query_x[0]])
    y = mx.concatenate([fit_data.support_y[0], fit_data.query_y[0]])
    from reptile_fn.inner import adapt

    big = tasks.episodes(type(one)(mx.repeat(one.family_ids, 20), mx.repeat(one.keys, 20, axis=0)), mx.random.key(7))
    x = big.support_x.reshape(-1, 1)
    y = big.support_y.reshape(-1, 1)
    fitted, _ = adapt(InnerLoop(lr=1e-2, steps=400, optimizer="adam"), model.apply, mse, model.init(mx.random.key(8)), (x, y))[:2]
    episodes = tasks.episodes(same_task, mx.random.key(9))
    # a small inner lr: the fitted net sits in a sharp minimum, where lr 0.01 SGD steps diverge
    perfect = per_episode_curves(InnerLoop(lr=1e-3, steps=5), model.apply, mse, fitted, episodes)["loss"]
    rand = per_episode_curves(InnerLoop(lr=1e-3, steps=5), model.apply, mse, model.init(mx.random.key(10)), episodes)["loss"]
    assert (perfect.mean(0) <= rand.mean(0)).all() and perfect[:, 0].mean() < 0.1


def test_final_evaluation_never_samples_training_tasks(monkeypatch):
    cfg = C.load(None, TINY)
    s = R.build(cfg)
    params = s.model.init(mx.random.key(0))

    def forbidden(*a, **k):
        raise AssertionError("evaluation sampled the training pool")

    monkeypatch.setattr(type(s.tasks), "sample_train", forbidden)
    monkeypatch.setattr(type(s.tasks), "sample_train_tasks", forbidden)
    ev = R.final_evaluation(s, params, s.meta.init(params), episodes=10, baselines=("random",))
    assert set(ev["inits"]) == {"meta", "random"}
    # and the held-out tasks it draws are not in the pool
    pool = s.tasks.train_pool()
    test = s.tasks.sample_test_tasks(R.run_keys(cfg.seed).eval_final, 200)
    pool_keys = {tuple(k) for k in np.array(pool.keys).tolist()}
    assert not any(tuple(k) in pool_keys for k in np.array(test.keys).tolist())


def test_plots_write_png_files(tmp_path):
    curve = {"steps": [0, 1, 2], "episodes": 3, "metric": {"mean": [0.5, 0.7, 0.8], "ci95": [0.1, 0.05, 0.05]},
             "loss": {"mean": [0.7, 0.5, 0.4], "ci95": [0.1, 0.1, 0.1]}}
    ev = {"metric": "accuracy", "k_shot": 5, "inits": {"meta": curve, "random": curve}}
    p = plots.adaptation_curves(ev, tmp_path / "c.png")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in [
        {"iteration": 10, "support_loss": 0.7, "adapted_loss": 0.3},
        {"iteration": 20, "support_loss": 0.6, "adapted_loss": 0.2},
        {"iteration": 20, "eval": {"loss": 0.4, "metric": 0.8}}]))
    q = plots.training_curve(metrics, tmp_path / "t.png")
    x = np.linspace(-5, 5, 50)
    r = plots.sine_fit(x, np.sin(x), (x[:5], np.sin(x[:5])), {"meta": {0: x * 0, 1: np.sin(x)}}, tmp_path / "s.png")
    for f in (p, q, r):
        data = f.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert not list(tmp_path.glob(".*.tmp.png"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runner = CliRunner()
    for name, extra in (("a", []), ("b", ["algorithm=fomaml"])):
        args = ["train", "--out", str(root / name), "--no-progress"]
        for item in TINY + extra:
            args += ["--set", item]
        assert runner.invoke(app, args).exit_code == 0
    return root


def test_eval_writes_results_and_figures(two_runs):
    run = two_runs / "a"
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(run / "checkpoint.safetensors"),
                                      "--speed-steps", "20", "--episodes", "10"])
    assert result.exit_code == 0, result.output
    for row in ("meta", "random", "transfer", "head", "adaptation speed"):
        assert row in result.output
    data = json.loads((run / "eval" / "results.json").read_text())
    assert set(data["inits"]) == {"meta", "random", "transfer", "head"} and "speed" in data
    assert len(data["inits"]["head"]["metric"]["mean"]) == 21
    for png in ("curves.png", "training.png"):
        assert (run / "eval" / png).read_bytes().startswith(PNG)


def test_compare_prints_a_markdown_table(two_runs):
    result = CliRunner().invoke(app, ["compare", str(two_runs / "a"), str(two_runs / "b")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| run | algorithm") and any("| b | fomaml |" in line for line in lines)
    bad = CliRunner().invoke(app, ["compare", str(two_runs / "missing")])
    assert bad.exit_code == 2 and "error:" in bad.output


def test_progress_durations_read_at_a_glance():
    from reptile_fn.progress import duration

    assert [duration(s) for s in (0.4, 119, 120, 7199, 7200, 112021)] == ["0 s", "119 s", "2 min", "120 min", "2.0 h",
                                                                          "31.1 h"]
    assert duration(float("nan")) == "?"
