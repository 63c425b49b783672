"""``init``: meta-training that starts from another run's (or a shipped) parameters."""

import shutil

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from reptile_fn import config as C
from reptile_fn import run as R
from reptile_fn.errors import ConfigError
from reptile_fn.models import conv4
from reptile_fn.run.build import build, run_keys
from reptile_fn.run.warm import transplant

from conftest import TINY, quiet


def _flat(tree):
    return {k: np.array(v) for k, v in tree_flatten(tree)}


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    out = tmp_path_factory.mktemp("donor") / "run"
    R.train(C.load(None, TINY), out, progress=False, log=quiet)
    return out / R.CHECKPOINT


def test_a_warm_started_run_begins_at_the_donors_parameters_and_trains_on(donor, tmp_path):
    _, want, _, _ = R.load(donor, with_tasks=False)
    source = tmp_path / "donor.safetensors"
    shutil.copy(donor, source)
    cfg = C.load(None, TINY + (f"init={source}", "seed=3"))
    run = build(cfg)
    got = run.initial_params(run_keys(cfg.seed).init)
    fresh = run.model.init(run_keys(cfg.seed).init)
    assert _flat(got).keys() == _flat(want).keys()
    for k, v in _flat(want).items():
        np.testing.assert_array_equal(_flat(got)[k], v, err_msg=k)
    assert any(not np.array_equal(_flat(fresh)[k], v) for k, v in _flat(want).items())  # not the seed's init

    out = tmp_path / "warm"
    R.train(cfg, out, progress=False, log=quiet, stop_at=10)
    source.unlink()  # only the start reads it
    R.train(None, out, resume=True, progress=False, log=quiet)  # a warm start resumes like any run
    _, trained, _, it = R.load(out / R.CHECKPOINT, with_tasks=False)
    assert it == 20 and any(not np.array_equal(_flat(trained)[k], v) for k, v in _flat(want).items())
    assert C.load(out / "config.yaml").init == str(source)  # the run records where it started


def test_a_head_of_another_way_starts_fresh_the_body_is_copied():
    five, twenty = conv4((28, 28, 1), 5, filters=8), conv4((28, 28, 1), 20, filters=8)
    donor, target = five.init(mx.random.key(0)), twenty.init(mx.random.key(1))
    out, d, t = _flat(transplant(donor, target, source="donor")), _flat(donor), _flat(target)
    assert out.keys() == t.keys()
    heads = [k for k in out if k.startswith("head.")]
    assert heads and all(out[k].shape == t[k].shape for k in out)
    for k in out:
        np.testing.assert_array_equal(out[k], t[k] if k in heads and d[k].shape != t[k].shape else d[k], err_msg=k)


def test_other_architectures_are_one_clear_error():
    small, wide = conv4((28, 28, 1), 5, filters=8), conv4((28, 28, 1), 5, filters=16)
    with pytest.raises(ConfigError, match=r"init = x: .*conv.*shape .*model"):
        transplant(small.init(mx.random.key(0)), wide.init(mx.random.key(0)), source="x")
    normed = conv4((28, 28, 1), 5, filters=8, norm="batch")
    with pytest.raises(ConfigError, match="another architecture .*model.norm"):
        transplant(small.init(mx.random.key(0)), normed.init(mx.random.key(0)), source="x")


def test_mlp_width_mismatch_and_missing_file_and_peft_are_config_errors(donor, tmp_path):
    with pytest.raises(ConfigError, match=r"shape .*model"):
        run = build(C.load(None, TINY + (f"init={donor}", "model.hidden=32")))
        run.initial_params(mx.random.key(0))
    with pytest.raises(ConfigError, match="does not exist"):
        build(C.load(None, TINY + (f"init={tmp_path / 'nope.safetensors'}",))).initial_params(mx.random.key(0))
    with pytest.raises(ConfigError, match="peft.base"):
        build(C.load(None, TINY + (f"init={donor}", "peft.method=lora", "peft.base=random")))


def test_cli_validate_reads_the_init(donor, tmp_path):
    from typer.testing import CliRunner

    from reptile_fn.cli import app

    res = CliRunner().invoke(app, ["validate", "--set", f"init={tmp_path / 'gone.safetensors'}"])
    assert res.exit_code != 0 and "error: init = " in res.output and "does not exist" in res.output
    res = CliRunner().invoke(app, ["validate", "--set", f"init={donor}", "--set", "model.hidden=32"])
    assert res.exit_code != 0 and "error: init = " in res.output and "shape" in res.output
    assert CliRunner().invoke(app, ["validate", "--set", f"init={donor}", "--set", "model.hidden=16"]).exit_code == 0


def test_a_run_folder_stands_for_its_checkpoint_in_init_and_peft_base(donor):
    """``init`` and ``peft.base`` take what ``--checkpoint`` takes: a run folder, its checkpoint, a shipped name."""
    _, want, _, _ = R.load(donor, with_tasks=False)
    cfg = C.load(None, TINY + (f"init={donor.parent}",))
    run = build(cfg)
    for k, v in _flat(want).items():
        np.testing.assert_array_equal(_flat(run.initial_params(run_keys(cfg.seed).init))[k], v, err_msg=k)
    cfg = C.load(None, TINY + ("peft.method=lora", f"peft.base={donor.parent}"))
    run = build(cfg)
    base = _flat(run.initial_params(mx.random.key(0))["base"])
    assert base.keys() == _flat(want).keys()
    for k, v in _flat(want).items():
        np.testing.assert_array_equal(base[k], v, err_msg=k)
    empty = donor.parent.parent / "empty"
    empty.mkdir(exist_ok=True)
    for key in ("init", "peft.base"):
        extra = ("peft.method=lora",) if key == "peft.base" else ()
        with pytest.raises(ConfigError, match=rf"{key} = .*empty is a folder without a checkpoint.safetensors"):
            build(C.load(None, TINY + extra + (f"{key}={empty}",))).initial_params(mx.random.key(0))


def test_a_typo_in_peft_base_is_caught_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"peft.base = 'pretrian' \(did you mean 'pretrain'\?\)"):
        C.load(None, ["peft.method=lora", "peft.base=pretrian"])
    with pytest.raises(ConfigError, match=r"did you mean 'omniglot-5w1s'"):
        C.load(None, ["peft.method=lora", "peft.base=omniglot-5w1"])


def test_lora_on_own_images_over_a_shipped_omniglot_init(tmp_path):
    """peft.base = a shipped name: the base is its features (a head of another n_way starts fresh), an adapter
    is meta-learned over them on the user's grayscale images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(16):
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, size=(28, 28), dtype=np.uint8)).save(tmp_path / "data" / f"c{c}" / f"{i}.png")
    cfg = C.load("images_5w1s", [f"tasks.path={tmp_path / 'data'}", "tasks.n_way=3", "tasks.train_shots=1",
                                 "tasks.query_size=1", "peft.method=lora", "peft.base=omniglot-5w1s"])
    run = build(cfg)
    base = _flat(run.initial_params(mx.random.key(0))["base"])
    _, shipped, _, _ = R.load("omniglot-5w1s", with_tasks=False)
    shipped = _flat(shipped)
    assert base.keys() == shipped.keys()
    for k, v in shipped.items():
        if k.startswith("head."):
            assert base[k].shape[-1] == 3 and v.shape[-1] == 5  # 3-way here, 5-way there: fresh
        else:
            np.testing.assert_array_equal(base[k], v, err_msg=k)


def test_a_start_from_another_kind_of_run_names_the_kinds(donor):
    """No model setting turns an MLP into conv4: init / peft.base from another kind of run say what each run is, and
    init refuses an adapter run as peft.base does."""
    with pytest.raises(ConfigError, match=r"init = omniglot-5w1s is a conv4 run \(tasks.dataset = omniglot\) and this "
                                          r"run's model is mlp"):
        build(C.load(None, TINY + ("init=omniglot-5w1s",))).initial_params(mx.random.key(0))
    with pytest.raises(ConfigError, match="init = minilm-intent-lora is itself a PEFT run"):
        build(C.load(None, TINY + ("init=minilm-intent-lora",))).initial_params(mx.random.key(0))
    with pytest.raises(ConfigError, match=r"peft.base = omniglot-5w1s is a conv4 run"):
        build(C.load(None, TINY + ("peft.method=lora", "peft.base=omniglot-5w1s"))).initial_params(mx.random.key(0))
    with pytest.raises(ConfigError) as typo:  # suggestions are whole networks only
        C.load(None, ["peft.method=lora", "peft.base=minilm-intent-lor"])
    assert "minilm-intent-lora" not in str(typo.value) and "omniglot-5w1s" in str(typo.value)


def test_a_start_with_another_channel_count_names_model_channels():
    gray, colour = conv4((28, 28, 1), 5, filters=8), conv4((28, 28, 3), 5, filters=8)
    with pytest.raises(ConfigError, match=r"conv0.w .* it takes 1-channel images, so set model.channels=1"):
        transplant(gray.init(mx.random.key(0)), colour.init(mx.random.key(0)), source="x", key="peft.base")
