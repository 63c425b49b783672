"""Config: defaults, YAML files, --set overrides, and one clear ConfigError per mistake."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reptile_fn import config as C
from reptile_fn.algorithms import ALGORITHMS
from reptile_fn.errors import ConfigError, ReptileFnError
from reptile_fn.tasks import FAMILIES

REPO = Path(__file__).resolve().parents[1]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _leaf_fields(cls=C.Config, prefix="") -> list[str]:
    """Independent enumeration of settable keys, straight from the dataclass fields."""
    out = []
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            out += _leaf_fields(type(default), prefix + f.name + ".")
        else:
            out.append(prefix + f.name)
    return out


def _yaml_value(v) -> str:
    """A --set value that YAML parses back to ``v`` (JSON is a YAML subset for these values)."""
    return json.dumps(list(v) if isinstance(v, tuple) else v)


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --- defaults and files --------------------------------------------------------------------------

def test_builtin_default_is_config_dataclass_defaults():
    cfg = C.load()
    assert cfg == C.Config()
    assert cfg.algorithm in ALGORITHMS
    assert all(f in FAMILIES for f in cfg.tasks.families)
    C.validate(cfg)  # the built-in default must itself be valid


def test_default_yaml_equals_builtin_defaults():
    path = REPO / "configs" / "default.yaml"
    if not path.exists():
        pytest.skip("configs/default.yaml does not exist (yet)")
    assert C.load(path) == C.Config()
    # Not just equal after defaults are filled in: the file spells out every key.
    assert set(_flatten(yaml.safe_load(path.read_text()))) == set(C.leaf_keys())


@pytest.mark.parametrize("name", ["sine.yaml"])
def test_shipped_example_configs_load(name):
    path = REPO / "configs" / name
    if not path.exists():
        pytest.skip(f"configs/{name} does not exist (yet)")
    cfg = C.load(path)
    assert cfg.tasks.families == tuple(yaml.safe_load(path.read_text())["tasks"]["families"])


def test_yaml_file_partial_overrides_keep_other_defaults(tmp_path):
    p = _write(tmp_path, "inner_lr: 0.5\ntasks:\n  families: [sine]\n  k_shot: 10\nmodel: {hidden: 8}\n")
    cfg = C.load(p)
    assert cfg.inner_lr == 0.5 and isinstance(cfg.inner_lr, float)
    assert cfg.tasks.families == ("sine",)
    assert cfg.tasks.k_shot == 10
    assert cfg.model.hidden == 8
    # everything not mentioned keeps the built-in default
    assert cfg.tasks.query_size == C.Config().tasks.query_size
    assert cfg.outer_lr == C.Config().outer_lr
    assert cfg.eval == C.Config().eval


def test_empty_yaml_file_is_the_default(tmp_path):
    assert C.load(_write(tmp_path, "# nothing set\n")) == C.Config()


def test_set_overrides_apply_on_top_of_a_file(tmp_path):
    p = _write(tmp_path, "tasks: {k_shot: 3}\ninner_lr: 0.5\n")
    cfg = C.load(p, ["k_shot=7"])
    assert cfg.tasks.k_shot == 7
    assert cfg.inner_lr == 0.5


def test_family_given_as_a_plain_string_becomes_a_tuple(tmp_path):
    assert C.load(None, ["tasks.families=sine"]).tasks.families == ("sine",)


# --- --set overrides -----------------------------------------------------------------------------

def test_set_by_dotted_key_and_by_unique_leaf_name_agree():
    by_dotted = C.load(None, ["tasks.k_shot=10"])
    by_leaf = C.load(None, ["k_shot=10"])
    assert by_dotted.tasks.k_shot == 10
    assert by_dotted == by_leaf
    assert by_leaf == dataclasses.replace(C.Config(), tasks=dataclasses.replace(C.Config().tasks, k_shot=10))


@pytest.mark.parametrize(
    "item, key, expected",
    [
        ("meta_iterations=123", "meta_iterations", 123),
        ("inner_lr=0.5", "inner_lr", 0.5),
        ("inner_lr=1", "inner_lr", 1.0),  # an int where a float goes is fine
        ("outer_lr_final=null", "outer_lr_final", None),
        ("eval.inner_lr=~", "eval.inner_lr", None),
        ("eval.inner_lr=0.25", "eval.inner_lr", 0.25),
        ("inner_batch_size=4", "inner_batch_size", 4),
        ("families=[xor, spiral]", "tasks.families", ("xor", "spiral")),
        ("trainable=['layer0.*', 'out.*']", "trainable", ("layer0.*", "out.*")),
        ("activation=tanh", "model.activation", "tanh"),
        ("every=7", "eval.every", 7),
        ("during_training_episodes=3", "eval.during_training_episodes", 3),
        ("inner_optimizer=adam", "inner_optimizer", "adam"),
        # numbers as YAML 1.2 and Python read them, not YAML 1.1's octal and base 60 (010 was 8, 1:30 was 90)
        ("meta_iterations=010", "meta_iterations", 10),
        ("meta_iterations=1_000", "meta_iterations", 1000),
        ("meta_iterations=0x10", "meta_iterations", 16),
        ("seed=-0", "seed", 0),
        ("inner_lr=1e-3", "inner_lr", 0.001),
        ("outer_lr_final=.5e-1", "outer_lr_final", 0.05),
        ("trainable=1:30", "trainable", ("1:30",)),
    ],
)
def test_set_values_are_parsed_as_yaml(item, key, expected):
    cfg = C.load(None, [item])
    got = C.get(cfg, key)
    assert got == expected
    assert type(got) is type(expected)
    # only that key changed
    rest = {k: v for k, v in _flatten(C.to_dict(cfg)).items() if k != key}
    assert rest == {k: v for k, v in _flatten(C.to_dict(C.Config())).items() if k != key}


def test_set_exact_key_wins_over_leaf_name_of_a_section():
    # 'inner_lr' is both a top-level key and eval.inner_lr's leaf name: the exact key wins.
    cfg = C.load(None, ["inner_lr=0.3"])
    assert cfg.inner_lr == 0.3
    assert cfg.eval.inner_lr is None


def test_later_set_wins():
    assert C.load(None, ["k_shot=3", "tasks.k_shot=4"]).tasks.k_shot == 4


@pytest.mark.parametrize("key", C.leaf_keys())
def test_every_key_can_be_set_to_its_default(key):
    value = C.get(C.Config(), key)
    assert C.load(None, [f"{key}={_yaml_value(value)}"]) == C.Config()


def test_unique_leaf_names_resolve_to_their_dotted_key():
    keys = C.leaf_keys()
    leaves = [k.split(".")[-1] for k in keys]
    for key in keys:
        leaf = key.split(".")[-1]
        if "." in key and leaves.count(leaf) == 1:
            assert C.resolve_key(leaf) == key


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=C.LIMITS["tasks.k_shot"].most))
def test_any_allowed_k_shot_round_trips_through_set(n):
    assert C.load(None, [f"k_shot={n}"]).tasks.k_shot == n
    assert C.load(None, [f"tasks.k_shot={n}"]).tasks.k_shot == n


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=1e-4, max_value=1e4, allow_nan=False, allow_infinity=False))
def test_positive_decimal_lr_round_trips_through_set(x):
    text = f"{x:.6f}"  # plain decimal notation
    assert C.load(None, [f"inner_lr={text}"]).inner_lr == float(text)


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("3E-4", 3e-4), ("1e6", 1e6), ("1.0e3", 1e3)])
def test_scientific_notation_is_a_number(text, value):
    assert C.load(None, [f"inner_lr={text}"]).inner_lr == value


def test_scientific_notation_in_yaml_file_is_a_number(tmp_path):
    assert C.load(_write(tmp_path, "inner_lr: 1e-3\n")).inner_lr == 1e-3


# --- errors: every one a ConfigError naming the key ------------------------------------------------

def _error(overrides=(), path=None) -> str:
    """The ConfigError message, with any echo of the --set items themselves removed.

    (A message may quote the offending ``--set`` item as its source; the tests check that the
    rest of the message names the key, so the echo must not count.)
    """
    with pytest.raises(ConfigError) as info:
        C.load(path, list(overrides))
    assert isinstance(info.value, ReptileFnError)
    message = str(info.value)
    assert "\n" not in message, "one-line messages"
    for item in overrides:
        if item:
            message = message.replace(item, "<item>")
    return message


@pytest.mark.parametrize(
    "item, names, suggestion",
    [
        ("inner_lrr=0.1", "inner_lrr", "inner_lr"),
        ("tasks.kshot=3", "tasks.kshot", "tasks.k_shot"),
        ("kshot=3", "kshot", "tasks.k_shot"),
        ("model.hiden=3", "model.hiden", "model.hidden"),
        ("meta_iteration=3", "meta_iteration", "meta_iterations"),
    ],
)
def test_unknown_set_key_names_it_and_suggests_closest(item, names, suggestion):
    message = _error([item])
    assert repr(names) in message
    assert f"did you mean {suggestion!r}" in message


@pytest.mark.parametrize(
    "text, names, suggestion",
    [
        ("inner_lrr: 0.1\n", "inner_lrr", "inner_lr"),
        ("tasks: {kshot: 3}\n", "tasks.kshot", "tasks.k_shot"),
        ("tasks:\n  familes: [sine]\n", "tasks.familes", "tasks.families"),
        ("modle: {hidden: 3}\n", "modle", "model"),
        ("eval:\n  episode: 3\n", "eval.episode", "eval.episodes"),
    ],
)
def test_unknown_file_key_names_it_and_suggests_closest(tmp_path, text, names, suggestion):
    p = _write(tmp_path, text)
    message = _error(path=p)
    assert repr(names) in message
    assert f"did you mean {suggestion!r}" in message
    assert str(p) in message  # says which file


def test_leaf_name_of_a_section_key_is_not_valid_at_top_level_of_a_file(tmp_path):
    message = _error(path=_write(tmp_path, "k_shot: 3\n"))
    assert "'k_shot'" in message and "tasks.k_shot" in message


@pytest.mark.parametrize(
    "item, key",
    [
        ("k_shot=abc", "tasks.k_shot"),
        ("k_shot=true", "tasks.k_shot"),  # a bool is not an int
        ("meta_iterations=yes", "meta_iterations"),
        ("k_shot=[1, 2]", "tasks.k_shot"),
        ("inner_lr=[0.1]", "inner_lr"),  # a list where a number goes
        ("inner_lr=fast", "inner_lr"),
        ("inner_lr=false", "inner_lr"),
        ("inner_steps=1.5", "inner_steps"),  # a float where an int goes
        ("seed=2.0", "seed"),
        ("model.activation=1", "model.activation"),
        ("families=[1, 2]", "tasks.families"),
        ("families=3", "tasks.families"),
        ("trainable={a: 1}", "trainable"),
        ("meta_iterations=null", "meta_iterations"),  # not optional
    ],
)
def test_wrong_type_names_key(item, key):
    message = _error([item])
    assert key in message
    assert "must be" in message


@pytest.mark.parametrize(
    "text, key",
    [
        ("tasks:\n  k_shot: five\n", "tasks.k_shot"),
        ("tasks: 3\n", "tasks"),
        ("model: [mlp]\n", "model"),
        ("inner_lr: [0.1, 0.2]\n", "inner_lr"),
    ],
)
def test_wrong_type_in_file_names_key(tmp_path, text, key):
    message = _error(path=_write(tmp_path, text))
    assert key in message


@pytest.mark.parametrize(
    "item, key",
    [
        ("meta_iterations=0", "meta_iterations"),
        ("meta_iterations=-5", "meta_iterations"),
        ("k_shot=0", "tasks.k_shot"),
        ("query_size=0", "tasks.query_size"),
        ("inner_steps=-1", "inner_steps"),
        ("eval.inner_steps=-1", "eval.inner_steps"),
        ("meta_batch_size=0", "meta_batch_size"),
        ("model.hidden=0", "model.hidden"),
        ("model.depth=-2", "model.depth"),
        ("eval.episodes=0", "eval.episodes"),
        ("log_every=0", "log_every"),
        ("checkpoint_every=0", "checkpoint_every"),
        ("seed=-1", "seed"),
        ("num_train_tasks=-1", "tasks.num_train_tasks"),
        ("inner_batch_size=0", "inner_batch_size"),
    ],
)
def test_non_positive_counts_are_refused(item, key):
    message = _error([item])
    assert key in message
    value = item.split("=", 1)[1]
    if value.startswith("-"):
        assert value in message  # shows the bad value


@pytest.mark.parametrize("item", ["inner_steps=0", "num_train_tasks=0", "seed=0", "outer_lr_final=0"])
def test_zero_is_allowed_where_it_means_something(item):
    key = C.resolve_key(item.split("=")[0])
    assert C.get(C.load(None, [item]), key) == 0


@pytest.mark.parametrize(
    "item, key",
    [
        ("inner_lr=0", "inner_lr"),
        ("inner_lr=-0.1", "inner_lr"),
        ("outer_lr=0", "outer_lr"),
        ("outer_lr=-1", "outer_lr"),
        ("eval.inner_lr=0", "eval.inner_lr"),
        ("outer_lr_final=-0.5", "outer_lr_final"),
    ],
)
def test_non_positive_learning_rates_are_refused(item, key):
    message = _error([item])
    assert key in message


@pytest.mark.parametrize("bad, suggestion", [("sin", "sine"), ("circle", "circles"), ("spirals", "spiral")])
def test_unknown_task_family_suggests_closest(bad, suggestion):
    message = _error([f"families=[{bad}]"])
    assert repr(bad) in message
    assert "tasks.families" in message
    assert f"did you mean {suggestion!r}" in message


def test_unknown_task_family_lists_the_available_ones(tmp_path):
    message = _error(path=_write(tmp_path, "tasks:\n  families: [linear, zigzag]\n"))
    assert "'zigzag'" in message
    for name in FAMILIES:
        assert name in message


@pytest.mark.parametrize("families", ["[sine, xor]", "[linear, sine]", "[sine, linear, xor, circles, spiral]"])
def test_mixing_sine_with_2d_families_is_refused(families):
    message = _error([f"families={families}"])
    assert "tasks.families" in message
    assert "sine" in message


def test_mixing_2d_families_is_fine():
    cfg = C.load(None, ["families=[linear, xor, circles, spiral]"])
    assert cfg.tasks.families == ("linear", "xor", "circles", "spiral")


def test_empty_families_is_refused():
    assert "tasks.families" in _error(["families=[]"])


@pytest.mark.parametrize(
    "item, key, suggestion",
    [
        ("algorithm=reptil", "algorithm", "reptile"),
        ("algorithm=foo", "algorithm", None),
        ("inner_optimizer=adamw", "inner_optimizer", "adam"),
        ("outer_optimizer=rmsprop", "outer_optimizer", None),
        ("model.activation=rellu", "model.activation", "relu"),
        ("model.norm=group", "model.norm", None),
    ],
)
def test_unknown_choices_name_key_and_options(item, key, suggestion):
    message = _error([item])
    assert key in message
    assert repr(item.split("=", 1)[1]) in message
    if key == "algorithm":
        for name in ALGORITHMS:
            assert name in message
    if suggestion:
        assert f"did you mean {suggestion!r}" in message


@pytest.mark.parametrize("text", ["inner_lr: [0.1, 0.2\n", "tasks:\n  k_shot: 3\n kshot: 2\n", "a: b: c\n", "\tinner_lr: 1\n"])
def test_invalid_yaml_syntax(tmp_path, text):
    p = _write(tmp_path, text)
    message = _error(path=p)
    assert str(p) in message
    assert "YAML" in message


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_yaml_top_level_must_be_a_mapping(tmp_path, text):
    p = _write(tmp_path, text)
    message = _error(path=p)
    assert str(p) in message
    assert "mapping" in message


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    message = _error(path=p)
    assert str(p) in message
    assert "does not exist" in message


def test_directory_is_not_a_config_file(tmp_path):
    assert str(tmp_path) in _error(path=tmp_path)


@pytest.mark.parametrize("item", ["k_shot", "", "=3"])
def test_malformed_set_item(item):
    message = _error([item])
    assert "KEY=VALUE" in message or "unknown config key" in message


def test_set_into_a_non_section_is_refused(tmp_path):
    p = _write(tmp_path, "tasks: 3\n")
    message = _error(["k_shot=4"], path=p)
    assert "tasks" in message


def test_from_dict_rejects_a_non_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        C.from_dict([1, 2])


def test_from_dict_none_is_the_default():
    assert C.from_dict(None) == C.Config()


def test_from_dict_names_its_source():
    with pytest.raises(ConfigError, match=r"^my-run: unknown key 'inner_lrr'"):
        C.from_dict({"inner_lrr": 1}, source="my-run")


def test_with_overrides_starts_from_the_given_config():
    base = C.load(None, ["k_shot=3", "model.hidden=8"])
    cfg = C.with_overrides(base, ["inner_lr=0.5"])
    assert (cfg.tasks.k_shot, cfg.model.hidden, cfg.inner_lr) == (3, 8, 0.5)
    with pytest.raises(ConfigError, match="inner_lr"):
        C.with_overrides(base, ["inner_lr=-1"])


# --- dicts and keys ------------------------------------------------------------------------------

def test_to_dict_from_dict_round_trip_default():
    d = C.to_dict(C.Config())
    assert C.from_dict(d) == C.Config()
    # plain containers only, so it can go to YAML and JSON
    assert json.loads(json.dumps(d)) == d
    assert yaml.safe_load(C.dump(C.Config())) == d
    assert isinstance(d["tasks"]["families"], list)


@settings(max_examples=30, deadline=None)
@given(
    k_shot=st.integers(1, 50),
    hidden=st.integers(1, 512),
    inner_lr=st.floats(1e-6, 10.0, allow_nan=False),
    outer_lr_final=st.none() | st.just(0.0) | st.floats(1e-30, 1.0),  # float32 holds it (config refuses 1e-300)
    families=st.sampled_from([("sine",), ("linear",), ("xor", "spiral"), ("linear", "xor", "circles", "spiral")]),
    activation=st.sampled_from(["relu", "tanh", "gelu"]),
    eval_lr=st.none() | st.floats(1e-4, 1.0),
)
def test_to_dict_from_dict_round_trip(k_shot, hidden, inner_lr, outer_lr_final, families, activation, eval_lr):
    cfg = C.from_dict({
        "inner_lr": inner_lr, "outer_lr_final": outer_lr_final,
        "tasks": {"k_shot": k_shot, "families": list(families)},
        "model": {"hidden": hidden, "activation": activation},
        "eval": {"inner_lr": eval_lr},
    })
    assert C.from_dict(C.to_dict(cfg)) == cfg
    # the YAML dump written into run directories reads back to the same config
    assert C.from_dict(yaml.safe_load(C.dump(cfg))) == cfg


def test_leaf_keys_contents():
    keys = C.leaf_keys()
    assert len(keys) == len(set(keys))
    assert keys == _leaf_fields()
    assert set(keys) == set(_flatten(C.to_dict(C.Config())))
    for key in ("algorithm", "inner_lr", "outer_lr", "tasks.k_shot", "tasks.families", "model.hidden",
                "eval.inner_lr", "eval.every"):
        assert key in keys
    for section in ("tasks", "model", "eval"):
        assert section not in keys
    for key in keys:
        assert not dataclasses.is_dataclass(C.get(C.Config(), key))


def test_removed_keys_load_with_a_notice_or_fail_with_the_reason(tmp_path, capsys):
    """model.kind and peft.dropout carried no choice: a config setting the only value they could take loads
    (a stored run's silently, a file with a one-line notice); any other value, or --set, is an error."""
    ok = _write(tmp_path, "tasks:\n  dataset: synthetic\nmodel:\n  kind: mlp\npeft:\n  dropout: 0.0\n")
    assert C.load(ok) == C.Config()
    notices = capsys.readouterr().err.strip().splitlines()
    assert len(notices) == 2 and all(n.startswith("notice: ") and "no longer a setting" in n for n in notices)
    assert C.from_dict({"model": {"kind": "mlp"}}, stored=True) == C.Config()
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="model.kind is no longer a setting .*tasks.dataset"):
        C.load(_write(tmp_path, "model:\n  kind: conv4\n"))
    with pytest.raises(ConfigError, match="peft.dropout is no longer a setting"):
        C.load(_write(tmp_path, "peft:\n  dropout: 0.1\n"))
    with pytest.raises(ConfigError, match="model.kind is no longer a setting"):
        C.load(None, ["model.kind=mlp"])
    assert C.model_kind(C.load(None, ["tasks.dataset=omniglot"])) == "conv4"


# --- non-finite numbers, limits, files, shipped configs, trainable -----------------------------------

def _float_keys() -> list[str]:
    return [k for k in C.leaf_keys() if "float" in str(C._hint(*_owner(k)))]


def _owner(key: str):
    *sections, leaf = key.split(".")
    cls = C.Config
    for section in sections:
        cls = C._hint(cls, section)
    return cls, leaf


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value, needle", [("nan", "finite"), (".nan", "finite"), ("inf", "finite"), ("-.inf", "finite"),
                                           ("Infinity", "finite"), ("1e999", "finite|outside float32's range"),
                                           ("1e300", "outside float32's range"), ("-1e39", "outside float32's range"),
                                           ("1e-320", "it is 0 in float32")])
def test_nan_infinity_and_numbers_float32_cannot_hold_are_refused_for_every_float_key(key, value, needle):
    """1e300 passed as a number and overflowed in the first meta-step (its error then blamed inner_lr or outer_lr);
    1e-320 passed and was 0 in float32, so training did nothing."""
    item = f"{key}=[{value}, 0.5]" if "tuple" in str(C._hint(*_owner(key))) else f"{key}={value}"
    message = _error([item])
    assert key in message and re.search(needle, message), message


def test_every_float_key_is_covered():
    assert {"inner_lr", "outer_lr", "outer_lr_final", "inner_adam_betas", "eval.inner_lr", "tasks.val_fraction",
            "tasks.test_fraction", "peft.scale", "peft.rank_warmup", "peft.rank_final"} <= set(_float_keys())


def test_every_integer_key_has_a_limit():
    ints = [k for k in C.leaf_keys() if "int" in str(C._hint(*_owner(k)))]
    assert set(ints) - set(C.LIMITS) == {"model.channels"}  # 1, 3 or null: checked as a choice
    assert set(C.LIMITS) <= set(ints)


@pytest.mark.parametrize("key", sorted(C.LIMITS))
def test_limits_allow_the_bound_and_refuse_one_more(key, monkeypatch):
    monkeypatch.delenv(C.NO_LIMITS, raising=False)
    limit = C.LIMITS[key]
    method = ["peft.method=adalora"] if key.startswith("peft.") else []  # adapter keys are read only by a method
    method += ["tasks.dataset=images", "tasks.path=data"] if key == "model.image_size" else []  # read by images only
    assert C.get(C.load(None, [*method, f"{key}={limit.most}"]), key) == limit.most
    message = _error([*method, f"{key}={limit.most + 1}"])
    assert key in message and f"{limit.most:,}" in message and limit.why in message
    assert (C.NO_LIMITS in message) != limit.hard


@pytest.mark.parametrize("item, key", [("meta_batch_size=100000000000", "meta_batch_size"),
                                       ("meta_iterations=100000000000000", "meta_iterations"),
                                       ("hidden=10000000", "model.hidden"), ("query_size=100000000", "tasks.query_size"),
                                       (f"seed={2**64}", "seed"), (f"seed={10**40}", "seed")])
def test_absurd_sizes_are_refused_before_anything_is_built(item, key):
    message = _error([item])
    assert key in message and "above" in message


def test_the_largest_seed_mlx_takes_is_allowed():
    import mlx.core as mx

    assert C.load(None, [f"seed={2**64 - 1}"]).seed == 2**64 - 1
    mx.random.key(2**64 - 1)  # what a run does with it
    with pytest.raises(TypeError):
        mx.random.key(2**64)  # hence the hard limit


def test_no_limits_lifts_soft_limits_up_to_int32_but_never_hard_ones(monkeypatch):
    monkeypatch.setenv(C.NO_LIMITS, "1")
    assert C.load(None, ["hidden=10000"]).model.hidden == 10000
    assert "32-bit" in _error([f"hidden={2**31}"])
    assert "64-bit" in _error([f"seed={2**64}"])


def test_non_utf8_file_names_the_line(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("inner_lr: 0.1\n# café\n".encode("latin-1"))
    message = _error(path=p)
    assert str(p) in message and "not UTF-8" in message and "line 2" in message and "save it as UTF-8" in message


@pytest.mark.parametrize("text, key, where", [
    ("inner_lr: 0.1\nseed: 1\ninner_lr: 0.2\n", "'inner_lr'", "lines 1 and 3"),
    ("tasks:\n  k_shot: 1\n  query_size: 2\n  k_shot: 5\n", "'k_shot'", "lines 2 and 4"),
    ("tasks: {k_shot: 1, k_shot: 2}\n", "'k_shot'", "on line 1"),
    ("tasks:\n  k_shot: 1\ntasks:\n  query_size: 2\n", "'tasks'", "lines 1 and 3"),
])
def test_duplicate_keys_are_refused_naming_key_and_lines(tmp_path, text, key, where):
    p = _write(tmp_path, text)
    message = _error(path=p)
    assert str(p) in message and key in message and where in message and "twice" in message


def test_yaml_merge_keys_still_override(tmp_path):
    p = _write(tmp_path, "tasks:\n  <<: {k_shot: 1, query_size: 3}\n  k_shot: 2\n")
    assert C.load(p).tasks.k_shot == 2 and C.load(p).tasks.query_size == 3


def test_a_directory_is_not_a_config_and_a_run_directory_points_at_its_config(tmp_path):
    (tmp_path / "run").mkdir()
    message = _error(path=tmp_path / "run")
    assert "is a directory" in message and "config.yaml" not in message
    (tmp_path / "run" / "config.yaml").write_text("seed: 1\n")
    assert str(tmp_path / "run" / "config.yaml") in _error(path=tmp_path / "run")


@pytest.mark.parametrize("overrides, needle", [
    (["tasks.n_way=1"], "leaves nothing to classify"),
    (["inner_adam_betas=[0.9]"], "e.g. [0.9, 0.999]"),
    (["tasks.resample=evil"], "give one of them"),
    (["tasks.test_split=bogus"], "which `eval --split` sets)"),
    (["tasks.dataset=images", "tasks.path=/x", "model.channels=2"], "give one of those"),
    (["tasks.dataset=images", "tasks.path=/x", "tasks.val_fraction=0.9", "tasks.test_fraction=0.9"], "e.g. 0.2 and 0.2"),
])
def test_value_errors_say_what_to_give_instead(overrides, needle):
    """Each names the problem, then after '; ' a value that works (one class per episode is refused: every answer
    would be right, a silent 100 %)."""
    message = _error(overrides)
    assert needle in message and "; " in message.split(": ", 1)[1], message


def test_a_bare_name_that_is_both_a_folder_here_and_a_shipped_config_names_both(tmp_path, monkeypatch):
    """A run folder named like a shipped config (`train --out sine`): `--config sine` used to be 'a directory', as if
    the shipped name did not exist; now the error offers both files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sine").mkdir()
    (tmp_path / "sine" / "config.yaml").write_text("seed: 1\n")
    message = _error(path="sine")
    assert "both a folder here and a shipped config" in message and "sine/config.yaml" in message
    assert C.load(str(C.files.resolve("sine.yaml").parent / "sine.yaml")).tasks.families == ("sine",)
    assert C.load("sine/config.yaml").seed == 1


@pytest.mark.parametrize("name", C.shipped_names())
def test_every_shipped_config_loads_by_name_with_or_without_yaml(name):
    path = ["tasks.path=data"] if name.startswith(("images", "csv")) else []  # they name their data on the command line
    assert C.load(name, path) == C.load(f"{name}.yaml", path) == C.load(REPO / "configs" / f"{name}.yaml", path)


def test_shipped_names_are_the_repository_configs():
    assert C.shipped_names() == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert {"default", "sine", "omniglot_5w1s", "images_5w1s", "csv_5w5s_lora"} <= set(C.shipped_names())


def test_a_file_of_the_same_name_wins_over_a_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sine").write_text("seed: 7\n")
    assert C.load("sine").seed == 7
    assert C.load("sine.yaml").tasks.families == ("sine",)


def test_unknown_config_name_lists_the_shipped_ones():
    message = _error(path="omniglot_5w2s")
    assert "'omniglot_5w2s'" in message and "shipped" in message
    for name in C.shipped_names():
        assert name in message


def test_a_missing_path_with_a_folder_is_not_looked_up_by_name(tmp_path):
    message = _error(path=tmp_path / "sine.yaml")
    assert str(tmp_path / "sine.yaml") in message and "does not exist" in message


def test_installed_package_configs_come_first(tmp_path, monkeypatch):
    """In a wheel the configs live in reptile_fn/configs/ (pyproject's force-include), beside the code."""
    from reptile_fn.config import files

    package = tmp_path / "site-packages" / "reptile_fn"
    (package / "configs").mkdir(parents=True)
    (package / "configs" / "mine.yaml").write_text("seed: 3\n")
    monkeypatch.setattr(files, "PACKAGE", package)
    assert C.shipped_names() == ["mine"]
    assert C.load("mine").seed == 3
    (package / "configs" / "mine.yaml").unlink()
    (package / "configs").rmdir()
    assert C.shipped_names() == []  # no configs/ beside site-packages counts without a pyproject.toml


def test_pyproject_ships_the_configs_in_the_wheel():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"] == {"configs": "reptile_fn/configs"}


@pytest.mark.parametrize("patterns, bad", [(["nothing.*"], ["'nothing.*'"]),
                                           (["head.*", "layer9.*", "x"], ["'layer9.*'", "'x'"])])
def test_trainable_patterns_that_match_nothing_are_named_with_the_paths(patterns, bad):
    paths = ["layer0.w", "layer0.b", "head.w", "head.b"]
    with pytest.raises(ConfigError) as info:
        C.check_trainable(patterns, paths, source="cfg.yaml")
    message = str(info.value)
    assert message.startswith("cfg.yaml: trainable pattern")
    for b in bad:
        assert b in message
    assert "'head.*'" not in message
    assert "layer0.w, layer0.b, head.w, head.b" in message and "trainable=[head.*]" in message


def test_trainable_patterns_that_match_pass_and_long_path_lists_are_folded():
    C.check_trainable(["*"], ["a.w"])
    C.check_trainable(["layer*.w", "head.*"], ["layer0.w", "layer1.w", "head.w"])
    paths = [f"encoder.layer{i}.{n}.{p}" for i in range(6) for n in ("query", "key") for p in ("w", "b")] + ["head.w"]
    with pytest.raises(ConfigError, match=r"are encoder\.layer\*\.query\.w, encoder\.layer\*\.query\.b, "
                                          r"encoder\.layer\*\.key\.w, encoder\.layer\*\.key\.b, head\.w;"):
        C.check_trainable(["encoder.layers.*"], paths)


@pytest.mark.parametrize("part", ["train", "test"])
def test_within_group_is_for_data_sets_with_groups(part):
    """tasks.{train,test}_within_group needs groups (CLINC150's domains, a CSV's group column): on another data
    set it is one ConfigError naming the key, not a silent no-op."""
    assert C.load(None, ["tasks.dataset=clinc150", f"tasks.{part}_within_group=true"]).tasks.dataset == "clinc150"
    with pytest.raises(ConfigError, match=rf"tasks.{part}_within_group .* is for clinc150 .* not omniglot; set it to false"):
        C.load(None, ["tasks.dataset=omniglot", f"tasks.{part}_within_group=true"])


def test_clinc_intent_lora_is_the_shipped_adapters_training_config():
    """configs/clinc_intent_lora.yaml reproduces minilm-intent-lora: the config its card's command trained with."""
    import shlex

    from reptile_fn import pretrained

    words = shlex.split(pretrained.card("minilm-intent-lora")["training"]["command"].split(" (")[0])
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    trained = C.load(words[words.index("--config") + 1], sets)
    assert C.load("clinc_intent_lora") == trained
    assert (trained.algorithm, trained.outer_lr_final, trained.peft.head_scale) == ("fomaml", None, 10.0)


def test_within_group_held_out_episodes_are_not_for_banking77():
    with pytest.raises(ConfigError, match="Banking77 is one domain"):
        C.load(None, ["tasks.dataset=clinc150", "tasks.test_split=banking77", "tasks.test_within_group=true"])
    assert C.load(None, ["tasks.dataset=clinc150", "tasks.test_split=val", "tasks.test_within_group=true"])


@pytest.mark.parametrize("item, dataset", [("tasks.test_path=other.csv", "synthetic"), ("tasks.text_column=t", "images"),
                                           ("model.channels=3", "csv"), ("tasks.path=x", "omniglot"),
                                           ("model.image_size=56", "omniglot")])  # Omniglot's loader makes 28 px
def test_a_key_the_data_set_does_not_read_is_an_error(item, dataset):
    sets = [f"tasks.dataset={dataset}", *(["tasks.path=data"] if dataset in ("images", "csv") else []), item]
    with pytest.raises(ConfigError, match=f"{item.split('=')[0]} = .* is read only when tasks.dataset is"):
        C.load(None, sets)


def test_own_images_too_small_for_conv4_are_refused():
    """image_size=1 trained a conv4 on single pixels without a word."""
    sets = ["tasks.dataset=images", "tasks.path=data"]
    with pytest.raises(ConfigError, match="model.image_size = 7 is too small.*give 8 or more"):
        C.load(None, [*sets, "model.image_size=7"])
    assert C.load(None, [*sets, "model.image_size=8"]).model.image_size == 8


def test_config_from_a_pipe_is_read_and_a_silent_pipe_or_endless_file_is_refused(tmp_path, monkeypatch):
    """`--config <(...)` works; a named pipe nobody writes to (open() would block forever), /dev/zero and an
    oversized file are refused with one error each; a YAML mistake names its line."""
    import os
    import threading

    from reptile_fn.config import files

    monkeypatch.setattr(files, "PIPE_WAIT_S", 0.3)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is a pipe that nothing wrote to"):
        C.load(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("meta_iterations: 7\n"))
    writer.start()
    assert C.load(fifo).meta_iterations == 7
    writer.join()
    with pytest.raises(ConfigError, match="is over 1 MB"):
        C.load("/dev/zero")
    (tmp_path / "big.yaml").write_text("# x\n" * 300_000)
    with pytest.raises(ConfigError, match="is over 1 MB"):
        C.load(tmp_path / "big.yaml")
    (tmp_path / "bad.yaml").write_text("seed: 1\ntasks: [1,\n  k_shot: 2\n")
    with pytest.raises(ConfigError, match="not valid YAML on line 4"):
        C.load(tmp_path / "bad.yaml")


def test_a_random_base_on_a_text_run_is_refused():
    """A text model's own init is the pretrained encoder, so peft.base = random silently meant init there."""
    with pytest.raises(ConfigError, match="peft.base = random on a text run"):
        C.load(None, ["tasks.dataset=clinc150", "peft.method=lora", "peft.base=random",
                      "peft.targets=[encoder.layers.*.query.w]"])
    assert C.load(None, ["peft.method=lora", "peft.base=random"]).peft.base == "random"  # synthetic: a random MLP


def test_small_mistakes_get_their_fix():
    """A shipped config's name with '-' for '_' is suggested; split fractions beside a split column (which decides
    alone) are refused rather than ignored."""
    with pytest.raises(ConfigError, match="did you mean 'omniglot_5w1s'"):
        C.load("omniglot-5w1s")
    with pytest.raises(ConfigError, match="tasks.val_fraction and tasks.test_fraction are not read"):
        C.load(None, ["tasks.dataset=csv", "tasks.path=x.csv", "tasks.split_column=split", "tasks.test_fraction=0.3"])


@pytest.mark.parametrize("text, needle", [("meta_iterations: 010\n", None), ("meta_iterations: 1:30\n", "must be an integer, got '1:30'"),
                                          ("meta_iterations: " + "9" * 5000 + "\n", "has 5,000 digits")])
def test_config_files_read_numbers_as_yaml_1_2_and_refuse_endless_ones(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    if needle is None:
        assert C.load(p).meta_iterations == 10
    else:
        with pytest.raises(ConfigError, match=needle) as e:
            C.load(p)
        assert len(str(e.value)) < 300  # the value is not echoed whole


def test_an_endless_set_value_is_a_short_error_that_says_it_is_too_large():
    """It said 'must be an integer' (Python reads no int of more than 4,300 digits) or 'must be a finite number'."""
    for key, needle in (("meta_iterations", "is far too large"), ("inner_lr", "outside float32's range")):
        with pytest.raises(ConfigError, match=f"{key} = .*{needle}") as e:
            C.load(None, [f"{key}={'9' * 5000}"])
        assert len(str(e.value)) < 400 and "must be" not in str(e.value)


def test_a_nested_list_is_named_as_such():
    with pytest.raises(ConfigError, match=r"tasks.families must be a flat list, got \[\['sine'\]\]; write it like"):
        C.load(None, ["tasks.families=[[sine]]"])


def test_a_data_folder_for_synthetic_tasks_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="tasks.data_dir = '/data' is read by data sets that live in a data folder"):
        C.load(None, ["tasks.data_dir=/data"])
    assert C.load("omniglot_5w1s", ["tasks.data_dir=/data"]).tasks.data_dir == "/data"


@pytest.mark.parametrize("item", ["peft.rank=8", "peft.scale=2.0", "peft.targets=[conv0.w]", "peft.base=random",
                                  "peft.rank_final=0.3"])
def test_adapter_keys_without_a_peft_method_are_refused_not_ignored(item):
    """peft.rank=8 with peft.method none was 'config OK' and did nothing; peft.head still serves plain runs."""
    message = _error([item])
    assert item.split("=")[0] in message and "peft.method is none" in message
    assert C.load(None, ["peft.method=lora", item]).peft.method == "lora"
    C.load(None, ["peft.head=zero"])  # no error: not an adapter key
