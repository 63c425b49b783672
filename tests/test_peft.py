"""PEFT: LoRA trees, merging, adapter-only meta-learning, adapter checkpoints, AdaLoRA-style ranks."""

import json

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

from reptile_fn import config as C
from reptile_fn import peft
from reptile_fn import tree as T
from reptile_fn.algorithms import ALGORITHMS
from reptile_fn.errors import CheckpointError, ConfigError
from reptile_fn.inner import InnerLoop, adapt
from reptile_fn.losses import cross_entropy, mse
from reptile_fn.models import conv4, mlp
from reptile_fn.peft import adalora
from reptile_fn.tasks import Episode
from reptile_fn.run import ADAPTER_DIR, baseline_inits, train
from reptile_fn.run import build as setup
from reptile_fn.run import load as load_run

from conftest import TINY, quiet
from helpers import max_abs_diff, outer, regression_batch

LORA = ("peft.method=lora", "peft.base_pretrain_iterations=50", "tasks.families=[xor]", "peft.base_families=[linear]")


def _with_b(adapter, key, std=0.3):
    """The adapter with random (non-zero) B factors, so that it changes the model."""
    flat = tree_flatten(adapter)
    keys = mx.random.split(key, len(flat))
    return T._unflatten([(p, std * mx.random.normal(x.shape, key=k) if p.endswith("lora_b") else x)
                         for (p, x), k in zip(flat, keys)])


@settings(max_examples=25, deadline=None)
@given(d_in=st.integers(1, 9), hidden=st.integers(1, 12), depth=st.integers(1, 3), rank=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_fresh_adapter_is_exactly_the_base(d_in, hidden, depth, rank, seed):
    model = mlp(d_in, 3, hidden=hidden, depth=depth)
    k1, k2, k3 = mx.random.split(mx.random.key(seed), 3)
    base = model.init(k1)
    adapter = peft.lora_init(k2, base, targets=("*.w",), rank=rank)
    x = mx.random.normal((5, d_in), key=k3)
    fused = peft.lora_apply(model.apply, scale=2.5)(base, adapter, x)
    assert np.array_equal(np.array(fused), np.array(model.apply(base, x)))  # B = 0: bit for bit


@settings(max_examples=25, deadline=None)
@given(d_in=st.integers(1, 9), hidden=st.integers(1, 12), rank=st.integers(1, 6), scale=st.floats(0.1, 4.0),
       seed=st.integers(0, 2**16))
def test_merge_then_apply_equals_lora_apply(d_in, hidden, rank, scale, seed):
    model = mlp(d_in, 2, hidden=hidden, depth=2)
    k1, k2, k3, k4 = mx.random.split(mx.random.key(seed), 4)
    base = model.init(k1)
    adapter = _with_b(peft.lora_init(k2, base, targets=("layer*.w", "head.w"), rank=rank), k3)
    x = mx.random.normal((6, d_in), key=k4)
    merged = peft.merge(base, adapter, scale=scale)
    out = peft.lora_apply(model.apply, scale=scale)(base, adapter, x)
    assert max_abs_diff(model.apply(merged, x), out) < 1e-5
    # and the merged weight is W + scale·A·B, by hand
    a, b = adapter["layer1"]["w"]["lora_a"], adapter["layer1"]["w"]["lora_b"]
    want = np.array(base["layer1"]["w"]) + scale * np.array(a) @ np.array(b)
    assert np.allclose(np.array(merged["layer1"]["w"]), want, atol=1e-5)
    assert max_abs_diff(merged["layer1"]["b"], base["layer1"]["b"]) == 0.0  # untargeted leaves untouched


def test_lora_init_conventions_and_errors():
    base = mlp(3, 2, hidden=8, depth=2).init(mx.random.key(0))
    adapter = peft.lora_init(mx.random.key(1), base, targets=("layer1.w",), rank=3)
    a, b = adapter["layer1"]["w"]["lora_a"], adapter["layer1"]["w"]["lora_b"]
    assert a.shape == (8, 3) and b.shape == (3, 8)
    assert float(mx.max(mx.abs(a))) <= 1 / np.sqrt(8) and float(mx.max(mx.abs(b))) == 0.0
    assert peft.lora.targets_of(adapter) == ["layer1.w"]
    assert peft.trainable_count(adapter) == 3 * (8 + 8)
    # a rank above min(in, out) is clipped to full rank
    assert peft.lora_init(mx.random.key(1), base, targets=("layer0.w",), rank=10)["layer0"]["w"]["lora_a"].shape == (3, 3)
    with pytest.raises(ConfigError, match="no parameter matches"):
        peft.lora_init(mx.random.key(1), base, targets=("nothing.*",))
    with pytest.raises(ConfigError, match="only weights with 2"):
        peft.lora_init(mx.random.key(1), base, targets=("layer0.b",))
    with pytest.raises(ValueError, match="does not have"):
        peft.merge({"other": base["layer1"]}, adapter)


def test_conv_lora_is_a_low_rank_update_of_the_im2col_matrix():
    model = conv4((8, 8, 1), 3, filters=4)
    base = model.init(mx.random.key(0))
    adapter = _with_b(peft.lora_init(mx.random.key(1), base, targets=("conv*.w",), rank=2), mx.random.key(2))
    merged = peft.merge(base, adapter)
    w, w2 = base["conv1"]["w"], merged["conv1"]["w"]  # (out, 3, 3, in)
    d = np.array(w2 - w).reshape(w.shape[0], -1)  # (out, 9·in): rows are output channels
    assert w2.shape == w.shape and np.linalg.matrix_rank(d, tol=1e-5) == 2
    a, b = adapter["conv1"]["w"]["lora_a"], adapter["conv1"]["w"]["lora_b"]
    assert a.shape == (9 * 4, 2) and b.shape == (2, 4)
    assert np.allclose(d, (np.array(a) @ np.array(b)).T, atol=1e-6)
    x = mx.random.normal((2, 8, 8, 1), key=mx.random.key(3))
    assert max_abs_diff(model.apply(merged, x), peft.lora_apply(model.apply)(base, adapter, x)) < 1e-5


def _peft_params(seed=0, *, method="lora", rank=2, d_in=2):
    model = mlp(d_in, 2, hidden=8, depth=2)
    pf = peft.peft_model(model, method=method, rank=rank)
    params = pf.model.init(mx.random.key(seed))
    params["adapter"] = _with_b(params["adapter"], mx.random.key(seed + 1), 0.1)
    return pf, params


def _classification_batch(seed, n_tasks, n=10, d_in=2):
    k = mx.random.split(mx.random.key(seed), 4)
    return Episode(mx.random.normal((n_tasks, n, d_in), key=k[0]), mx.random.randint(0, 2, (n_tasks, n), key=k[1]),
                   mx.random.normal((n_tasks, n, d_in), key=k[2]), mx.random.randint(0, 2, (n_tasks, n), key=k[3]))


def test_inner_loop_leaves_the_base_alone_when_only_adapters_train():
    pf, params = _peft_params()
    inner, _ = peft.patterns("lora", train_head=False)
    batch = _classification_batch(0, 1)
    adapted, losses = adapt(InnerLoop(lr=0.5, steps=3, trainable=T.match(inner)), pf.model.apply, cross_entropy, params, (batch.support_x[0], batch.support_y[0]))[:2]
    assert max_abs_diff(adapted["base"], params["base"]) == 0.0
    assert max_abs_diff(adapted["adapter"], params["adapter"]) > 1e-4  # the adapter did learn
    assert float(losses[-1]) < float(losses[0])


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "maml", "metasgd", "anil"])
def test_outer_update_moves_only_adapter_and_head(algorithm):
    pf, params = _peft_params()
    inner, meta = peft.patterns("lora", reptile=algorithm == "reptile")
    if algorithm == "anil":
        inner = (peft.HEAD,)
    extra = {} if algorithm == "reptile" else {"meta_trainable": T.match(meta)}
    opt = outer("sgd", 1.0) if algorithm == "reptile" else outer("adam", 0.05)
    step = ALGORITHMS[algorithm](pf.model.apply, cross_entropy, InnerLoop(lr=0.3, steps=3, trainable=T.match(inner)),
                                 opt, **extra)
    state = step.init(params)
    new, _, _ = step.step(params, state, _classification_batch(1, 4), mx.random.key(2))
    after = dict(tree_flatten(new))
    assert set(after) == set(T.paths(params))
    moved = {p for p, a in tree_flatten(params) if max_abs_diff(a, after[p]) > 0}
    learned = {p for p in T.paths(params) if T.match(meta)(p)}
    assert moved and moved <= learned
    assert any(p.startswith("adapter.") for p in moved) and "base.head.w" in moved
    assert not any(p.startswith("base.layer") for p in moved)


def test_meta_learn_base_flag_lets_the_base_move():
    pf, params = _peft_params()
    inner, meta = peft.patterns("lora", meta_learn_base=True)
    step = ALGORITHMS["fomaml"](pf.model.apply, cross_entropy, InnerLoop(lr=0.3, steps=2, trainable=T.match(inner)),
                                outer("adam", 0.05), meta_trainable=T.match(meta))
    new, _, _ = step.step(params, step.init(params), _classification_batch(1, 4), mx.random.key(2))
    assert max_abs_diff(new["base"]["layer0"], params["base"]["layer0"]) > 0
    # Reptile can only meta-learn what adapts: the flag makes the base adapt too
    inner_r, meta_r = peft.patterns("lora", meta_learn_base=True, reptile=True)
    assert inner_r == meta_r and "base.*" in inner_r


def test_adapter_checkpoint_round_trip_and_wrong_base(tmp_path):
    pf, params = _peft_params()
    _, meta = peft.patterns("lora")
    learned = [p for p in T.paths(params) if T.match(meta)(p)]
    peft.save_adapters(tmp_path, params, learned, {"rank": 2, "scale": 1.0, "base_source": "test base"})
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["rank"] == 2 and len(cfg["base_hash"]) == 64 and "base.head.w" in cfg["learned"]
    # onto the base the adapter was made for (with a stale head: the saved head wins)
    stale = dict(params["base"], head={"w": mx.zeros_like(params["base"]["head"]["w"]),
                                       "b": params["base"]["head"]["b"]})
    restored, _ = peft.load_adapters(tmp_path, stale)
    assert max_abs_diff(restored, params) == 0.0
    # onto another base: refused, naming the problem and the fix
    other = pf.model.init(mx.random.key(99))["base"]
    with pytest.raises(CheckpointError, match="different base network.*load it onto the base it was made for"):
        peft.load_adapters(tmp_path, other)
    with pytest.raises(CheckpointError, match="does not exist"):
        peft.load_adapters(tmp_path / "nowhere", params["base"])


def test_budget_schedule_is_cubic_and_monotone():
    b = [int(adalora.budget(t, initial=40, target=10, total_steps=100, init_warmup=10, final_warmup=20))
         for t in range(101)]
    assert b[0] == b[10] == 40 and b[80] == b[100] == 10
    assert all(x >= y for x, y in zip(b, b[1:]))
    assert b[45] == round(10 + 30 * (1 - 35 / 70) ** 3)


def test_prune_keeps_the_top_components_and_never_revives():
    pf, params = _peft_params(method="adalora", rank=4)
    adapter = params["adapter"]
    scores = adalora.init_scores(adapter)
    # give every component a distinct score through the EMA state
    for i, key in enumerate(scores):
        for k in ("lora_a", "lora_b"):
            scores[key]["mean"][k] = mx.ones_like(scores[key]["mean"][k]) * (i + 1)
            scores[key]["unc"][k] = mx.ones_like(scores[key]["unc"][k]) * mx.arange(1, scores[key]["unc"][k].shape[
                1 if k == "lora_a" else 0] + 1).reshape((1, -1) if k == "lora_a" else (-1, 1))
    comps = adalora.component_scores(scores)
    flat = np.concatenate([np.array(v) for v in comps.values()])
    masks = adalora.prune(adapter, scores, mx.array(3))
    kept = np.concatenate([np.array(m) for m in masks.values()])
    assert kept.sum() == 3 and set(np.argsort(-flat)[:3]) == set(np.flatnonzero(kept))
    pruned = adalora.set_masks(adapter, masks)
    again = adalora.prune(pruned, scores, mx.array(100))  # a larger budget does not bring components back
    assert sum(float(m.sum()) for m in again.values()) == 3


def test_adalora_run_prunes_to_the_target_rank(tmp_path):
    cfg = C.load(None, TINY + ("peft.method=adalora", "peft.rank=4", "peft.target_rank=3",
                               "peft.base_pretrain_iterations=50", "meta_iterations=40", "eval.every=40"))
    summary = train(cfg, tmp_path, progress=False, log=quiet)
    _, params, _, _ = load_run(tmp_path / "checkpoint.safetensors")
    ranks = peft.ranks(params["adapter"])
    assert sum(ranks.values()) == 3 and summary["peft"]["ranks"] == ranks
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    totals = [r["rank_total"] for r in lines if "rank_total" in r]
    assert totals[0] > totals[-1] == 3  # the budget falls over training (log means: first window is pre-pruning)


def test_adalora_keeps_the_persistent_inner_state_and_evaluation_adapts_from_it(tmp_path):
    """AdaLoRA's wrapper passes the algorithm's inner loop through: a kept inner Adam state (inner_state:
    persistent) reaches evaluation, and evaluating from it differs from a fresh state."""
    from reptile_fn.run import evaluate_init, run_keys

    cfg = C.load(None, TINY + ("peft.method=adalora", "peft.rank=4", "peft.base_pretrain_iterations=20",
                               "inner_optimizer=adam", "inner_lr=0.01", "inner_state=persistent", "meta_iterations=10"))
    train(cfg, tmp_path, progress=False, log=quiet)
    run, params, state, _ = load_run(tmp_path / "checkpoint.safetensors")
    assert "rank_scores" in state and "inner_opt" in state  # both wrappers' states were saved and restored
    start = run.meta.inner(state).start
    assert start is not None and start.t is state["inner_t"] and int(start.t) == 10 * cfg.meta_batch_size * 5
    assert max_abs_diff(start.opt, state["inner_opt"]) == 0.0 and float(T.global_norm(start.opt["v"])) > 0
    key = run_keys(cfg.seed).eval_final
    kept = evaluate_init(run, params, key, 10, 3, state=state)
    fresh = evaluate_init(run, params, key, 10, 3)
    assert kept["loss"]["mean"][0] == fresh["loss"]["mean"][0] and kept["loss"]["mean"][-1] != fresh["loss"]["mean"][-1]


def test_peft_run_end_to_end_writes_adapters_and_beats_nothing_with_clear_baselines(tmp_path):
    cfg = C.load(None, TINY + LORA)
    summary = train(cfg, tmp_path, progress=False, log=quiet)
    adapter_dir = tmp_path / ADAPTER_DIR
    assert (adapter_dir / "adapters.safetensors").is_file() and (adapter_dir / "adapter_config.json").is_file()
    assert set(summary["eval"]["inits"]) == {"meta", "lora0"}
    s, params, state, _ = load_run(tmp_path / "checkpoint.safetensors")
    start = s.initial_params(mx.random.split(mx.random.key(cfg.seed), 5)[0])
    # the base never moved; the saved adapter goes back onto it
    assert max_abs_diff(params["base"]["layer0"], start["base"]["layer0"]) == 0.0
    restored, adapter_cfg = peft.load_adapters(adapter_dir, start["base"])
    assert max_abs_diff(restored, params) == 0.0
    assert adapter_cfg["method"] == "lora" and "pretrain" in adapter_cfg["base_source"]
    base = baseline_inits(s, ("lora0", "base-full", "base-head", "random"))
    assert max_abs_diff(base["lora0"].params, start) == 0.0
    assert base["base-head"].trainable("base.head.w") and not base["base-head"].trainable("base.layer0.w")
    with pytest.raises(ConfigError, match="unknown baseline 'transfer' for a PEFT run"):
        baseline_inits(s, ("transfer",))


@pytest.mark.parametrize("method,start", [("head", "base-head"), ("full", "base-full")])
def test_a_run_without_an_adapter_is_measured_against_its_own_start_not_a_lora0_twin(tmp_path, method, start):
    """peft.method head/full has no adapter: its start adapted like the run is base-head/base-full, so the final
    evaluation names it so, the defaults hold it once, and asking for lora0 says which baseline it would be."""
    from reptile_fn.run.report import default_baselines

    summary = train(C.load(None, TINY + ("peft.method=" + method, "peft.train_head=true")), tmp_path,
                    progress=False, log=quiet)
    assert set(summary["eval"]["inits"]) == {"meta", start}
    s, _, _, _ = load_run(tmp_path / "checkpoint.safetensors")
    assert default_baselines(s) == ("base-full", "base-head")
    with pytest.raises(ConfigError, match=f"lora0 .*peft.method is {method}.*is {start}"):
        baseline_inits(s, ("lora0",))


def test_peft_counts_and_patterns():
    pf, params = _peft_params(method="lora", rank=2)
    inner, meta = peft.patterns("lora")
    n = peft.counts(params, T.match(inner), T.match(meta))
    head = 8 * 2 + 2
    assert n["adapted"] == n["meta_learned"] == 2 * (2 + 8) + 2 * (8 + 8) + head
    assert n["total"] == T.param_count(params)
    assert peft.patterns("head")[0] == (peft.HEAD,) and peft.patterns("full")[0] == ("base.*",)


def test_peft_config_errors():
    with pytest.raises(ConfigError, match="peft.dropout is no longer a setting"):
        C.load(None, ["peft.method=lora", "peft.dropout=0.1"])
    with pytest.raises(ConfigError, match="trainable and peft.method"):
        C.load(None, ["peft.method=lora", "trainable=[head.*]"])
    with pytest.raises(ConfigError, match="peft.method = 'loar' is not one of.*did you mean 'lora'"):
        C.load(None, ["peft.method=loar"])
    with pytest.raises(ConfigError, match="peft.base = 'foo'"):
        C.load(None, ["peft.method=lora", "peft.base=foo"])
    with pytest.raises(ConfigError, match="peft.rank must be > 0"):
        C.load(None, ["peft.method=lora", "peft.rank=0"])
    cfg = C.load(None, ["peft.method=lora", "tasks.families=[sine]", "peft.base_families=[xor]"])
    with pytest.raises(ConfigError, match="pick families of the same kind"):
        setup(cfg).initial_params(mx.random.key(0))


def test_base_from_a_plain_run_checkpoint(tmp_path):
    plain = tmp_path / "plain"
    train(C.load(None, TINY), plain, progress=False, log=quiet)
    cfg = C.load(None, TINY + ("peft.method=lora", f"peft.base={plain / 'checkpoint.safetensors'}"))
    s = setup(cfg)
    start = s.initial_params(mx.random.key(0))
    _, plain_params, _, _ = load_run(plain / "checkpoint.safetensors")
    assert max_abs_diff(start["base"], plain_params) == 0.0
    peft_run = tmp_path / "peft"
    train(cfg, peft_run, progress=False, log=quiet)
    cfg2 = C.load(None, TINY + ("peft.method=lora", f"peft.base={peft_run / 'checkpoint.safetensors'}"))
    with pytest.raises(ConfigError, match="itself a PEFT run"):
        setup(cfg2).initial_params(mx.random.key(0))


def test_regression_peft_mse_runs():
    model = mlp(1, 1, hidden=8, depth=2)
    pf = peft.peft_model(model, method="lora", rank=2)
    params = pf.model.init(mx.random.key(0))
    batch = regression_batch(0, 1)
    inner, _ = peft.patterns("lora")
    _, losses = adapt(InnerLoop(lr=0.05, steps=5, trainable=T.match(inner)), pf.model.apply, mse, params, (batch.support_x[0], batch.support_y[0]))[:2]
    assert float(losses[-1]) < float(losses[0])


@pytest.mark.parametrize("method", ["full", "head"])
def test_full_and_head_methods_train_without_an_adapter(tmp_path, method):
    cfg = C.load(None, TINY + (f"peft.method={method}", "peft.base_pretrain_iterations=50"))
    summary = train(cfg, tmp_path, progress=False, log=quiet)
    assert summary["peft"]["ranks"] == {}
    head = 16 * 2 + 2
    assert summary["peft"]["adapted"] == (head if method == "head" else summary["peft"]["total"])
    s, params, _, _ = load_run(tmp_path / "checkpoint.safetensors")
    start = s.initial_params(mx.random.split(mx.random.key(cfg.seed), 5)[0])
    moved_body = max_abs_diff(params["base"]["layer0"], start["base"]["layer0"]) > 0
    assert moved_body == (method == "full")


def test_cli_train_info_and_eval_of_a_peft_run(tmp_path):
    from typer.testing import CliRunner

    from reptile_fn.cli import app

    runner = CliRunner()
    sets = [a for item in TINY + LORA for a in ("--set", item)]
    trained = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--no-progress", *sets])
    assert trained.exit_code == 0, (trained.output, trained.exception)
    assert "peft lora:" in trained.stdout and "ranks: layer0.w 2, layer1.w 4" in trained.stdout
    assert "lora0" in trained.stdout  # the final table shows the meta-learned adapter vs a fresh one
    info = runner.invoke(app, ["info", *sets])
    assert info.exit_code == 0 and "parameters adapt per task" in info.stdout
    ev = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"), "--episodes", "10",
                             "--steps", "2", "--speed-steps", "0", "--out", str(tmp_path / "ev"),
                             "--set", "eval.inner_lr=0.05"])
    assert ev.exit_code == 0, (ev.output, ev.exception)
    rows = {line.split()[0] for line in ev.stdout.splitlines() if line.strip()}
    assert {"meta", "lora0", "base-full", "base-head"} <= rows
    stored = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert stored["inner_lr"] == 0.05  # --set reached the evaluation


def test_shipped_names_resolve_or_fail_clearly(tmp_path):
    from reptile_fn import pretrained

    for name in pretrained.names():
        assert pretrained.resolve(name).is_file()
    with pytest.raises(CheckpointError, match="neither a file nor a shipped initialization"):
        pretrained.resolve("omniglot-99w9s")
    real = tmp_path / "x.safetensors"
    real.write_bytes(b"")
    assert pretrained.resolve(real) == real


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "maml"])
def test_zero_head_adapts_in_every_task_but_is_never_meta_learned(algorithm):
    pf, params = _peft_params()
    params["base"]["head"] = {k: mx.zeros_like(v) for k, v in params["base"]["head"].items()}
    inner, meta = peft.patterns("lora", reptile=algorithm == "reptile", meta_learn_head=False)
    assert peft.HEAD in inner and peft.HEAD not in meta
    opt = outer("sgd", 1.0) if algorithm == "reptile" else outer("adam", 0.05)
    step = ALGORITHMS[algorithm](pf.model.apply, cross_entropy, InnerLoop(lr=0.3, steps=3, trainable=T.match(inner)),
                                 opt, meta_trainable=T.match(meta))
    new, state, _ = step.step(params, step.init(params), _classification_batch(1, 4), mx.random.key(2))
    new, _, _ = step.step(new, state, _classification_batch(2, 4), mx.random.key(3))
    assert max_abs_diff(new["base"]["head"], params["base"]["head"]) == 0.0  # still zero after two meta-steps
    assert max_abs_diff(new["adapter"], params["adapter"]) > 0  # the adapter is meta-learned
    # ... and the head does adapt inside each task
    adapted, _ = adapt(InnerLoop(lr=0.3, steps=2, trainable=T.match(inner)), pf.model.apply, cross_entropy, new, (_classification_batch(4, 1).support_x[0],
                                                           _classification_batch(4, 1).support_y[0]))[:2]
    assert max_abs_diff(adapted["base"]["head"], new["base"]["head"]) > 0


def test_reptile_meta_trainable_of_everything_is_plain_reptile():
    pf, params = _peft_params()
    inner, _ = peft.patterns("lora", reptile=True)
    loop = InnerLoop(lr=0.3, steps=2, trainable=T.match(inner))
    plain = ALGORITHMS["reptile"](pf.model.apply, cross_entropy, loop, outer("sgd", 0.7))
    masked = ALGORITHMS["reptile"](pf.model.apply, cross_entropy, loop, outer("sgd", 0.7), meta_trainable=lambda p: True)
    batch = _classification_batch(3, 4)
    a, _, _ = plain.step(params, plain.init(params), batch, mx.random.key(5))
    b, _, _ = masked.step(params, masked.init(params), batch, mx.random.key(5))
    assert max_abs_diff(a, b) == 0.0


def test_zero_head_config_runs_and_keeps_the_head_at_zero(tmp_path):
    cfg = C.load(None, TINY + LORA + ("peft.head=zero", "meta_iterations=10", "eval.every=10"))
    train(cfg, tmp_path, progress=False, log=quiet)
    s, params, _, _ = load_run(tmp_path / "checkpoint.safetensors")
    assert all(float(mx.abs(v).max()) == 0.0 for v in params["base"]["head"].values())
    assert s.inner.trainable("base.head.w") and not s.meta_trainable("base.head.w")
    for bad in (["peft.method=full"], ["peft.method=lora", "peft.meta_learn_base=true"],
                ["peft.method=lora", "peft.train_head=false"]):
        with pytest.raises(ConfigError, match="peft.head = zero"):
            C.load(None, [*bad, "peft.head=zero"])


def test_frozen_base_is_not_copied_into_the_checkpoint(tmp_path):
    """peft.base=init: the base stays at the model's init, so checkpoints hold its digest, and resuming and
    load_run rebuild it (a LoRA run over a 90 MB pretrained encoder writes its adapters, not the encoder)."""
    from reptile_fn import checkpoint as ck

    cfg = C.load(None, TINY + ("peft.method=lora", "peft.base=init", "meta_iterations=6", "checkpoint_every=3",
                               "eval.every=100"))
    train(cfg, tmp_path / "whole", progress=False, log=quiet)
    arrays, _ = ck.load(tmp_path / "whole" / "checkpoint.safetensors")
    derived = {k for k in arrays if k.startswith("derived.params.")}
    assert derived and all(k.startswith("derived.params.base.") for k in derived)
    assert not any(k.startswith("params.base.") and not k.startswith("params.base.head") for k in arrays)
    train(cfg, tmp_path / "part", progress=False, log=quiet, stop_at=3)
    train(None, tmp_path / "part", resume=True, progress=False, log=quiet)
    _, whole, _, it = load_run(tmp_path / "whole" / "checkpoint.safetensors")
    _, part, _, _ = load_run(tmp_path / "part" / "checkpoint.safetensors")
    assert it == 6 and max_abs_diff(whole, part) == 0.0


def test_eval_data_keeps_a_pretrained_base_from_training_on_the_scored_classes(tmp_path):
    """With every class held out (eval --data: tasks.test_split = all) the training split is the scored classes, so a
    peft.base: pretrain (which lora0 / base-full / base-head start from) would be pretrained on them: random only."""
    from types import SimpleNamespace

    from reptile_fn.run.report import default_baselines

    data = tmp_path / "imgs"
    for c in range(3):
        (data / f"c{c}").mkdir(parents=True)
    held = C.load("images_5w1s", [f"tasks.path={data}", "tasks.test_split=all", "peft.method=lora", "peft.base=pretrain"])
    run = SimpleNamespace(tasks=object(), cfg=held, peft=object())
    assert default_baselines(run) == ("random",)
    with pytest.raises(ConfigError, match="lora0 and base-full baselines are pretrained on the run's training classes"):
        baseline_inits(run, ("random", "lora0", "base-full"))
    own = SimpleNamespace(tasks=object(), cfg=C.with_overrides(held, ["peft.base=init"]), peft=object())
    assert default_baselines(own) == ("lora0", "base-full", "base-head")  # no pretraining: nothing seen
