"""The training loop: run files, summary, resume = uninterrupted, divergence, and that it learns."""

import json
import math
import re

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from reptile_fn import run as R
from reptile_fn import checkpoint as ck
from reptile_fn import config as C
from reptile_fn import tree as T
from reptile_fn.errors import CheckpointError, ConfigError, TrainingDivergedError

from conftest import TINY, quiet


def _train(cfg, out, **kw):
    return R.train(cfg, out, progress=False, log=quiet, **kw)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / R.METRICS).read_text().splitlines()]


def _flat_checkpoint(path):
    arrays, meta = ck.load(path)
    return {k: np.array(v) for k, v in arrays.items()}, meta


def _assert_same_checkpoint(a, b):
    fa, ma = _flat_checkpoint(a)
    fb, mb = _flat_checkpoint(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)  # bitwise: same floats, same order
    assert ma == mb


def _all_finite(flat):
    return all(np.all(np.isfinite(v)) for v in flat.values() if np.issubdtype(v.dtype, np.floating))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny uninterrupted run, shared read-only by the tests below."""
    cfg = C.load(None, TINY)
    out = tmp_path_factory.mktemp("tiny") / "run"
    summary = _train(cfg, out)
    return cfg, out, summary


# --- what a run writes --------------------------------------------------------------------------

def test_run_directory_contents(tiny_run):
    cfg, out, summary = tiny_run
    names = {p.name for p in out.iterdir()}
    assert {R.CHECKPOINT, R.METRICS, R.SUMMARY, "config.yaml"} <= names
    assert not [n for n in names if ".tmp" in n], names  # no temporary files left behind
    assert C.load(out / "config.yaml") == cfg
    assert json.loads((out / R.SUMMARY).read_text()) == summary


def test_checkpoint_holds_final_params_config_and_iteration(tiny_run):
    cfg, out, _ = tiny_run
    s, params, _, iteration = R.load(out / R.CHECKPOINT)
    assert iteration == cfg.meta_iterations
    assert s.cfg == cfg
    flat, meta = _flat_checkpoint(out / R.CHECKPOINT)
    assert C.from_dict(meta["config"]) == cfg
    assert _all_finite(flat)
    init = s.model.init(R.run_keys(cfg.seed).init)
    assert {k for k, _ in tree_flatten(params)} == {k for k, _ in tree_flatten(init)}
    # meta-training moved the parameters away from the initialization
    assert any(not np.array_equal(np.array(p), np.array(q))
               for (_, p), (_, q) in zip(tree_flatten(params), tree_flatten(init)))


def test_metrics_jsonl(tiny_run):
    cfg, out, _ = tiny_run
    records = _records(out)
    logs = [r for r in records if "eval" not in r]
    evals = [r for r in records if "eval" in r]
    n = cfg.meta_iterations
    assert [r["iteration"] for r in logs] == list(range(cfg.log_every, n + 1, cfg.log_every))
    # held-out checks during training, but not at the very end (the final evaluation covers it)
    assert [r["iteration"] for r in evals] == list(range(cfg.eval.every, n, cfg.eval.every))
    for r in logs:
        assert {"support_loss", "adapted_loss", "outer_lr"} <= set(r)
        assert all(math.isfinite(v) for v in r.values())
    for r in evals:
        assert set(r["eval"]) == {"loss", "metric"}  # classification: loss and accuracy
        assert 0.0 <= r["eval"]["metric"] <= 1.0
    # β is annealed linearly from outer_lr towards outer_lr_final = 0
    betas = [r["outer_lr"] for r in logs]
    assert all(a > b for a, b in zip(betas, betas[1:]))
    assert betas[0] <= 1.0  # the default outer_lr (null) resolves to Reptile's β = 1.0


@pytest.mark.parametrize("extra", [(), ("tasks.families=[sine]", "eval.inner_lr=0.01", "eval.inner_steps=4")])
def test_summary_contents(tmp_path, extra):
    cfg = C.load(None, TINY + extra)
    summary = _train(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / R.SUMMARY).read_text()) == summary
    assert summary["iteration"] == summary["meta_iterations"] == cfg.meta_iterations
    assert summary["config"] == C.to_dict(cfg)
    assert summary["seconds"] > 0
    # support examples adapted per second: meta-batch x support set (2-D: 2 classes x k; sine: k points) x inner steps
    support = cfg.tasks.k_shot * (1 if "tasks.families=[sine]" in extra else 2)
    per_step = cfg.meta_batch_size * support * cfg.inner_steps
    assert summary["examples_per_s"] == pytest.approx(summary["meta_steps_per_s"] * per_step, rel=0.01)
    ev = summary["eval"]
    classification = cfg.tasks.families != ("sine",)
    assert ev["kind"] == ("classification" if classification else "regression")
    assert ev["metric"] == ("accuracy" if classification else "mse")
    assert ev["k_shot"] == cfg.tasks.k_shot
    assert ev["inner_lr"] == (cfg.eval.inner_lr or cfg.inner_lr)
    assert set(ev["inits"]) == {"meta", "random"}
    k = cfg.eval.inner_steps
    for name, curve in ev["inits"].items():
        assert curve["steps"] == list(range(k + 1)), name
        assert curve["episodes"] == cfg.eval.episodes
        series = ["loss", "metric"] if classification else ["loss"]
        assert set(curve) == {"steps", "episodes", *series}
        for key in series:
            assert len(curve[key]["mean"]) == len(curve[key]["ci95"]) == k + 1
            assert all(math.isfinite(v) for v in curve[key]["mean"] + curve[key]["ci95"])
            assert all(v >= 0 for v in curve[key]["ci95"])
            assert any(v > 0 for v in curve[key]["ci95"])  # episodes differ, so the interval is not zero
        if classification:
            assert all(0.0 <= v <= 1.0 for v in curve["metric"]["mean"])
    # two different initializations give different results on the same episodes
    assert ev["inits"]["meta"]["loss"]["mean"][0] != ev["inits"]["random"]["loss"]["mean"][0]


def test_final_evaluation_is_reproducible_from_the_checkpoint(tiny_run):
    _, out, summary = tiny_run
    s, params, state, _ = R.load(out / R.CHECKPOINT)
    assert R.final_evaluation(s, params, state) == summary["eval"]


def test_format_results_has_a_row_per_init(tiny_run):
    _, _, summary = tiny_run
    lines = R.format_results(summary["eval"]).splitlines()
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"meta", "random"}
    meta = summary["eval"]["inits"]["meta"]["metric"]
    assert f"{100 * meta['mean'][0]:.2f} ± {100 * meta['ci95'][0]:.2f}" in rows["meta"]


def test_same_seed_same_run(tmp_path, tiny_run):
    cfg, out, _ = tiny_run
    _train(cfg, tmp_path / "again")
    _assert_same_checkpoint(out / R.CHECKPOINT, tmp_path / "again" / R.CHECKPOINT)
    assert _records(out) == _records(tmp_path / "again")


def test_different_seed_different_run(tmp_path, tiny_run):
    cfg, out, _ = tiny_run
    _train(C.with_overrides(cfg, ["seed=1"]), tmp_path / "other")
    a, _ = _flat_checkpoint(out / R.CHECKPOINT)
    b, _ = _flat_checkpoint(tmp_path / "other" / R.CHECKPOINT)
    assert not all(np.array_equal(a[k], b[k]) for k in a if k.startswith("params."))


# --- resume -------------------------------------------------------------------------------------

def _resume_matches_uninterrupted(tmp_path, tiny_run, stop_at):
    cfg, full, full_summary = tiny_run
    part = tmp_path / "part"
    partial = _train(cfg, part, stop_at=stop_at)
    assert partial["iteration"] == stop_at
    assert "eval" not in partial and not (part / R.SUMMARY).exists()
    _, meta = ck.load(part / R.CHECKPOINT)
    assert meta["iteration"] == stop_at

    messages = []
    resumed = R.train(None, part, resume=True, progress=False, log=messages.append)
    assert any(f"meta-iteration {stop_at}/{cfg.meta_iterations}" in m for m in messages)
    assert resumed["iteration"] == cfg.meta_iterations
    _assert_same_checkpoint(full / R.CHECKPOINT, part / R.CHECKPOINT)
    assert resumed["eval"] == full_summary["eval"]
    assert (part / R.METRICS).read_text() == (full / R.METRICS).read_text()


@pytest.mark.parametrize("stop_at", [5, 15])
def test_resume_equals_uninterrupted_run(tmp_path, tiny_run, stop_at):
    _resume_matches_uninterrupted(tmp_path, tiny_run, stop_at)


def test_resume_on_an_eval_boundary_keeps_the_eval_record(tmp_path, tiny_run):
    _resume_matches_uninterrupted(tmp_path, tiny_run, stop_at=10)  # eval.every = 10


def test_a_stop_during_the_evaluation_is_evaluated_on_resume(tmp_path, tiny_run, monkeypatch):
    """Ctrl-C (or SIGTERM) while iteration 10's held-out evaluation runs: the checkpoint at 10 says the evaluation
    is due, so the resumed run logs it first and the log equals the uninterrupted run's (it used to lose the point)."""
    from reptile_fn.run import loop

    cfg, full, full_summary = tiny_run
    part, real = tmp_path / "part", loop.evaluate_init

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "evaluate_init", stopped)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, part)
    _, meta = ck.load(part / R.CHECKPOINT)
    assert meta["iteration"] == 10 and meta["eval_due"] is True  # eval.every = 10
    assert not any("eval" in r for r in R.files.read_metrics(part / R.METRICS))
    monkeypatch.setattr(loop, "evaluate_init", real)
    calls = []

    def stop_at_the_first_step(*args, **kwargs):  # a resume stopped after the due evaluation, before any step
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_iteration", lambda run, w: stop_at_the_first_step)
    with pytest.raises(KeyboardInterrupt):
        _train(None, part, resume=True)
    assert calls and sum("eval" in r for r in R.files.read_metrics(part / R.METRICS)) == 1
    monkeypatch.undo()
    resumed = _train(None, part, resume=True)  # evaluates again: the log must hold it once
    assert (part / R.METRICS).read_text() == (full / R.METRICS).read_text()
    assert resumed["eval"] == full_summary["eval"]
    _assert_same_checkpoint(full / R.CHECKPOINT, part / R.CHECKPOINT)
    assert "eval_due" not in ck.load(part / R.CHECKPOINT)[1]


def test_resume_between_log_boundaries_gives_the_same_metrics(tmp_path, tiny_run):
    _resume_matches_uninterrupted(tmp_path, tiny_run, stop_at=7)  # log_every = 5


def test_resume_drops_records_written_after_the_checkpoint(tmp_path, tiny_run):
    cfg, full, _ = tiny_run
    part = tmp_path / "part"
    _train(cfg, part, stop_at=15)
    # a crash after logging iterations past the last checkpoint leaves stale records behind
    with open(part / R.METRICS, "a") as f:
        f.write(json.dumps({"iteration": 17, "support_loss": 123.0}) + "\n")
        f.write(json.dumps({"iteration": 20, "eval": {"loss": 1.0}}) + "\n")
    _train(None, part, resume=True)
    assert (part / R.METRICS).read_text() == (full / R.METRICS).read_text()


def test_resume_with_explicit_equal_config(tmp_path, tiny_run):
    cfg, full, _ = tiny_run
    part = tmp_path / "part"
    _train(cfg, part, stop_at=5)
    _train(C.load(None, TINY), part, resume=True)
    _assert_same_checkpoint(full / R.CHECKPOINT, part / R.CHECKPOINT)


@pytest.mark.parametrize("change, key", [("inner_lr=0.05", "inner_lr"), ("tasks.k_shot=3", "tasks.k_shot"),
                                         ("meta_iterations=40", "meta_iterations")])
def test_resume_with_different_config_is_refused(tmp_path, tiny_cfg, change, key):
    run = tmp_path / "run"
    _train(tiny_cfg, run, stop_at=10)
    before = (run / R.CHECKPOINT).read_bytes()
    metrics_before = (run / R.METRICS).read_text()
    with pytest.raises(ConfigError) as info:
        _train(C.with_overrides(tiny_cfg, [change]), run, resume=True)
    message = str(info.value)
    assert key in message
    others = [k for k in C.leaf_keys() if k != key and k not in key]
    assert not [k for k in others if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w.])", message)], message
    assert (run / R.CHECKPOINT).read_bytes() == before
    assert (run / R.METRICS).read_text() == metrics_before


@pytest.mark.parametrize("make_dir", [False, True])
def test_resume_without_checkpoint(tmp_path, tiny_cfg, make_dir):
    run = tmp_path / "run"
    if make_dir:
        run.mkdir()
    with pytest.raises(CheckpointError) as info:
        _train(tiny_cfg, run, resume=True)
    assert str(run / R.CHECKPOINT) in str(info.value)
    with pytest.raises(CheckpointError):
        _train(None, run, resume=True)


def test_resume_from_a_corrupt_checkpoint(tmp_path, tiny_cfg):
    run = tmp_path / "run"
    _train(tiny_cfg, run, stop_at=10)
    (run / R.CHECKPOINT).write_bytes((run / R.CHECKPOINT).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        _train(None, run, resume=True)


def test_resume_from_a_checkpoint_without_run_metadata(tmp_path, tiny_cfg):
    run = tmp_path / "run"
    s = R.build(tiny_cfg)
    params = s.model.init(R.run_keys(tiny_cfg.seed).init)
    ck.save(run / R.CHECKPOINT, params, s.meta.init(params))  # no config, no iteration
    with pytest.raises(CheckpointError):
        _train(None, run, resume=True)


def test_new_run_into_an_existing_run_is_refused(tmp_path, tiny_cfg):
    run = tmp_path / "run"
    _train(tiny_cfg, run)
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    with pytest.raises(ConfigError) as info:
        _train(C.with_overrides(tiny_cfg, ["seed=5"]), run)
    assert "--resume" in str(info.value)
    assert str(run) in str(info.value)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == files


def test_load_run_errors(tmp_path):
    with pytest.raises(CheckpointError):
        R.load(tmp_path / "missing.safetensors")
    ck.save(tmp_path / "bare.safetensors", {"w": mx.zeros((1,))})
    with pytest.raises(CheckpointError, match="config"):
        R.load(tmp_path / "bare.safetensors")


# --- divergence ---------------------------------------------------------------------------------

def _diverged_at(message: str) -> int:
    match = re.search(r"meta-iteration (\d+)", message)
    assert match, message
    return int(match.group(1))


def test_divergence_before_any_checkpoint(tmp_path):
    # Sine regression with a huge inner step size blows up the MSE within the first iterations.
    cfg = C.load(None, TINY + ("tasks.families=[sine]", "inner_lr=100.0"))
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as info:
        _train(cfg, run)
    message = str(info.value)
    assert _diverged_at(message) <= cfg.checkpoint_every
    assert "inner_lr" in message  # says what to lower
    assert not (run / R.CHECKPOINT).exists()  # nothing good to keep: no NaN checkpoint either
    assert not (run / R.SUMMARY).exists()
    records = _records(run) if (run / R.METRICS).exists() else []
    for r in records:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    if not records:
        assert not run.exists()  # a run that logged nothing leaves nothing behind


def test_natural_divergence_keeps_only_a_finite_checkpoint(tmp_path):
    # β ramps up linearly from 1 to 100: the first iterations are fine, later ones blow up.
    cfg = C.load(None, TINY + ("tasks.families=[sine]", "meta_iterations=40", "inner_lr=0.1",
                               "outer_lr=1.0", "outer_lr_final=100.0"))
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as info:
        _train(cfg, run)
    at = _diverged_at(str(info.value))
    assert at < cfg.meta_iterations
    if (run / R.CHECKPOINT).exists():
        flat, meta = _flat_checkpoint(run / R.CHECKPOINT)
        assert _all_finite(flat)
        assert meta["iteration"] < at
        assert meta["iteration"] % cfg.checkpoint_every == 0
    assert not (run / R.SUMMARY).exists()


def _poison_after(monkeypatch, after: int):
    """Make every meta-step after iteration ``after`` return NaN parameters."""
    import dataclasses

    from reptile_fn.run import loop

    original = loop.build

    def build(cfg, reduce=R.build.__defaults__[0]):
        s = original(cfg, reduce)
        step = s.meta.step

        def poisoned(params, state, batch, key):
            new, new_state, metrics = step(params, state, batch, key)
            bad = new_state["iteration"] > after
            new = tree_map(lambda x: mx.where(bad, mx.array(float("nan"), dtype=x.dtype), x), new)
            return new, new_state, metrics

        return dataclasses.replace(s, meta=s.meta._replace(step=poisoned))

    monkeypatch.setattr(loop, "build", build)


@pytest.mark.parametrize("log_every, checkpoint_every", [(5, 10), (20, 5)])
def test_divergence_keeps_the_last_good_checkpoint(tmp_path, tiny_cfg, monkeypatch, log_every, checkpoint_every):
    """NaN after iteration 12: the checkpoint from iteration 10 stays, equal to a clean run's at 10.

    (5, 10): caught by the check at the log record of iteration 15;
    (20, 5): no log record until 20, caught by the check before the checkpoint at 15.
    """
    cfg = C.with_overrides(tiny_cfg, [f"log_every={log_every}", f"checkpoint_every={checkpoint_every}"])
    clean = tmp_path / "clean"
    _train(cfg, clean, stop_at=10)

    _poison_after(monkeypatch, after=12)
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as info:
        _train(cfg, run)
    message = str(info.value)
    assert _diverged_at(message) == 15
    assert "iteration 10" in message  # points at the good checkpoint
    flat, meta = _flat_checkpoint(run / R.CHECKPOINT)
    assert meta["iteration"] == 10
    assert _all_finite(flat)
    _assert_same_checkpoint(clean / R.CHECKPOINT, run / R.CHECKPOINT)
    assert not (run / R.SUMMARY).exists()

    # and the run can be resumed from the good checkpoint once the cause is gone
    monkeypatch.undo()
    summary = _train(None, run, resume=True)
    assert summary["iteration"] == cfg.meta_iterations
    assert _all_finite(_flat_checkpoint(run / R.CHECKPOINT)[0])


# --- it learns (slow) ---------------------------------------------------------------------------

def _assert_meta_beats_random(ev, step, ratio):
    meta, rand = ev["inits"]["meta"]["loss"], ev["inits"]["random"]["loss"]
    assert meta["mean"][step] < ratio * rand["mean"][step], (meta["mean"], rand["mean"])
    # and not by chance: the 95% intervals do not overlap
    assert meta["mean"][step] + meta["ci95"][step] < rand["mean"][step] - rand["ci95"][step]


@pytest.mark.slow
def test_default_config_meta_learns(tmp_path):
    cfg = C.Config()
    summary = _train(cfg, tmp_path / "default")
    ev = summary["eval"]
    k = cfg.eval.inner_steps
    _assert_meta_beats_random(ev, k, ratio=0.7)
    acc_meta, acc_rand = ev["inits"]["meta"]["metric"]["mean"][k], ev["inits"]["random"]["metric"]["mean"][k]
    assert acc_meta > acc_rand + 0.1
    # adaptation helps the meta-learned init: loss falls from 0 to K steps
    assert ev["inits"]["meta"]["loss"]["mean"][k] < ev["inits"]["meta"]["loss"]["mean"][0]


@pytest.mark.slow
def test_sine_meta_learns(tmp_path):
    cfg = C.load(None, ["tasks.families=[sine]", "tasks.k_shot=10", "tasks.num_train_tasks=0", "meta_iterations=500",
                        "eval.episodes=200", "eval.every=1000", "checkpoint_every=1000"])
    ev = _train(cfg, tmp_path / "sine")["eval"]
    _assert_meta_beats_random(ev, cfg.eval.inner_steps, ratio=0.5)


def test_metasgd_evaluation_uses_the_learned_rates_even_with_eval_inner_lr(tmp_path):
    cfg = C.load(None, [*TINY, "algorithm=metasgd", "eval.inner_lr=0.5"])
    s = R.build(cfg)
    params = s.model.init(R.run_keys(cfg.seed).init)
    state = s.meta.init(params)
    state["inner_lr"] = {k: {n: v * 0 for n, v in d.items()} for k, d in state["inner_lr"].items()}  # α = 0
    ev = R.final_evaluation(s, params, state, episodes=10)
    loss = ev["inits"]["meta"]["loss"]["mean"]
    assert max(loss) - min(loss) < 1e-6  # zero learned rates: adaptation changes nothing, 0.5 was not used
    assert ev["inits"]["random"]["loss"]["mean"][0] != ev["inits"]["random"]["loss"]["mean"][-1]


@pytest.mark.parametrize("batches", [(), ("inner_batch_size=4",)])  # mini-batches: the Omniglot configs' inner loop
def test_persistent_inner_state_resumes_exactly_and_reaches_evaluation(tmp_path, batches):
    cfg = C.load(None, TINY + ("inner_optimizer=adam", "inner_lr=0.01", "inner_state=persistent", *batches))
    full, part = tmp_path / "full", tmp_path / "part"
    summary = _train(cfg, full)
    _train(cfg, part, stop_at=10)
    _train(None, part, resume=True)
    _assert_same_checkpoint(full / R.CHECKPOINT, part / R.CHECKPOINT)  # the Adam state travels in the checkpoint
    s, params, state, _ = R.load(full / R.CHECKPOINT)
    opt, t0 = s.meta.inner(state).start
    assert int(t0) == 20 * cfg.meta_batch_size * cfg.inner_steps and float(T.global_norm(opt["v"])) > 0
    keys = R.run_keys(cfg.seed)
    with_state = R.evaluate_init(s, params, keys.eval_final, 20, state=state)
    fresh = R.evaluate_init(s, params, keys.eval_final, 20)
    assert with_state["metric"]["mean"] == summary["eval"]["inits"]["meta"]["metric"]["mean"]
    assert with_state["loss"]["mean"][-1] != fresh["loss"]["mean"][-1]
    with pytest.raises(ConfigError, match="inner_state = persistent .* needs algorithm = reptile and inner_optimizer = adam"):
        C.load(None, ["inner_state=persistent"])


def test_eval_inner_batch_size_sets_the_evaluation_minibatch_only(tmp_path):
    # supervised-reptile trains on inner batches of 10 but evaluates on 5 (--eval-batch)
    base = C.load(None, [*TINY, "tasks.k_shot=10", "inner_batch_size=8"])
    cfg = C.with_overrides(base, ["eval.inner_batch_size=3"])
    s, s_default = R.build(cfg), R.build(base)
    assert R.evaluation_loop(s).batch_size == 3 and R.evaluation_loop(s_default).batch_size == 8
    assert s.inner.batch_size == s_default.inner.batch_size == 8
    params = s.model.init(R.run_keys(cfg.seed).init)
    key = R.run_keys(cfg.seed).eval_final
    small = R.evaluate_init(s, params, key, 20, 3)
    default = R.evaluate_init(s_default, params, key, 20, 3)
    assert small["loss"]["mean"][0] == default["loss"]["mean"][0]  # same episodes, same start
    assert small["loss"]["mean"][-1] != default["loss"]["mean"][-1]  # adapted on other minibatches
    # training is unchanged: the algorithm still takes minibatches of 8
    p0 = s.meta.init(params)
    batch = s.sample_train(mx.random.key(1), cfg.meta_batch_size)
    a = s.meta.step(params, p0, batch, mx.random.key(2))
    b = s_default.meta.step(params, s_default.meta.init(params), batch, mx.random.key(2))
    assert all(mx.array_equal(x, y).item() for (_, x), (_, y) in zip(tree_flatten(a[0]), tree_flatten(b[0])))
    with pytest.raises(ConfigError, match="eval.inner_batch_size"):
        C.load(None, ["eval.inner_batch_size=0"])
