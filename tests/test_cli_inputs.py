"""Bad inputs at the command line: every one is a single 'error: <problem>; <fix>' line on stderr with exit
status 2, never a traceback, and nothing already written is lost. Also --version, shipped configs by name,
run directories as --checkpoint, and bench outside a source checkout."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from typer.testing import CliRunner

import reptile_fn
from reptile_fn import cli, cli_options
from reptile_fn import config as C
from reptile_fn.cli import app
from reptile_fn.run import CHECKPOINT, SUMMARY

from conftest import TINY

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _sets(items) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _user_error(result, *needles: str) -> str:
    """Exit status 2, one 'error: …; …' line on stderr naming the problem and a fix, nothing else, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "error:" not in result.stdout
    assert "; " in lines[0], lines[0]  # the problem, then what to do
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("inputs") / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--no-progress", *_sets(TINY)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


# --- config values --------------------------------------------------------------------------------

@pytest.mark.parametrize("item, key", [("inner_lr=nan", "inner_lr"), ("outer_lr=.inf", "outer_lr"),
                                       ("eval.inner_lr=-.inf", "eval.inner_lr"), ("peft.scale=1e999", "peft.scale"),
                                       ("inner_adam_betas=[.nan, 0.9]", "inner_adam_betas")])
def test_non_finite_numbers(item, key):
    _user_error(runner.invoke(app, ["validate", "--set", item]), key, "finite")


@pytest.mark.parametrize("item, key", [("meta_batch_size=100000000000", "meta_batch_size"),
                                       ("meta_iterations=100000000000000", "meta_iterations"),
                                       ("hidden=10000000", "model.hidden"), ("query_size=100000000", "tasks.query_size"),
                                       (f"seed={2**64}", "seed")])
def test_absurd_sizes(item, key, tmp_path):
    out = tmp_path / "run"
    _user_error(runner.invoke(app, ["validate", "--set", item]), key, "above")
    _user_error(runner.invoke(app, ["train", "--out", str(out), "--no-progress", "--set", item]), key, "above")
    assert not out.exists()


def test_the_largest_seed_runs_a_meta_step():
    result = runner.invoke(app, ["validate", "--set", f"seed={2**64 - 1}", "--set", "hidden=8"])
    assert result.exit_code == 0, (result.output, result.exception)


@pytest.mark.parametrize("args, option", [(["--episodes", "100000000000"], "--episodes"),
                                          (["--steps", "100000000"], "--steps"),
                                          (["--speed-steps", "100000000"], "--speed-steps")])
def test_eval_counts_have_the_config_limits(tiny_run, args, option):
    _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), *args]), option, "above")


def test_trainable_patterns_that_match_no_parameter():
    message = _user_error(runner.invoke(app, ["validate", "--set", "trainable=[nothing.*]"]), "'nothing.*'")
    for path in ("layer0.w", "layer1.b", "head.w"):
        assert path in message
    assert "Must specify" not in message


# --- config files and shipped configs --------------------------------------------------------------

def test_non_utf8_config_file(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("# réglages\ninner_lr: 0.1\n".encode("latin-1"))
    _user_error(runner.invoke(app, ["validate", "--config", str(p)]), str(p), "UTF-8", "line 1")


def test_duplicate_key_in_config_file(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("tasks:\n  k_shot: 1\n  k_shot: 5\n")
    _user_error(runner.invoke(app, ["validate", "--config", str(p)]), str(p), "'k_shot'", "lines 2 and 3")


def test_directory_as_config(tiny_run):
    _user_error(runner.invoke(app, ["validate", "--config", str(tiny_run)]), str(tiny_run), "directory",
                str(tiny_run / "config.yaml"))


def test_empty_config_file_is_the_default(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    result = runner.invoke(app, ["validate", "--config", str(p), "--set", "hidden=8"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["sine", "sine.yaml"])
def test_shipped_config_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not next to configs/
    result = runner.invoke(app, ["validate", "--config", name])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "sine (regression)" in result.stdout


def test_unknown_config_name_lists_the_shipped_ones():
    message = _user_error(runner.invoke(app, ["validate", "--config", "omniglot_5w2s"]), "'omniglot_5w2s'")
    for name in C.shipped_names():
        assert name in message


def test_info_lists_shipped_configs():
    result = runner.invoke(app, ["info"])
    row = next(line for line in result.stdout.splitlines() if line.startswith("configs "))
    for name in C.shipped_names():
        assert name in row


def test_info_counts_a_data_set_configs_parameters_without_its_data(monkeypatch, tmp_path):
    """Counting parameters needs the model's shapes, which an Omniglot or text config gives without its data
    (info has no --data-dir to give)."""
    monkeypatch.delenv("REPTILE_FN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["info", "--config", "omniglot_20w1s"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("parameters"))
    from reptile_fn.models import conv4
    from reptile_fn.tree import param_count

    expected = param_count(conv4((28, 28, 1), 20, filters=64, norm="batch").init(mx.random.key(0)))
    assert f"conv4: {expected:,} of {expected:,} adapt per task" in row
    # your own images: counted without a tasks.path (for gray images unless model.channels says otherwise)
    row = next(line for line in runner.invoke(app, ["info", "--config", "images_5w1s"]).stdout.splitlines()
               if line.startswith("parameters"))
    gray = param_count(conv4((28, 28, 1), 5, filters=64, norm="batch").init(mx.random.key(0)))
    assert f"conv4: {gray:,} of {gray:,}" in row and "model.channels=3" in row


def test_train_with_a_shipped_config_name_writes_runs_under_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--config", "sine", "--no-progress", *_sets(TINY)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert (tmp_path / "runs" / "sine" / CHECKPOINT).is_file()


# --- version, bench -------------------------------------------------------------------------------

def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"reptile-fn {reptile_fn.__version__}"
    assert reptile_fn.__version__ == importlib.metadata.version("reptile-fn")


def test_version_of_the_real_program():
    code = "import sys; from reptile_fn.cli import app; sys.argv[0] = 'reptile-fn'; app()"
    proc = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"reptile-fn {reptile_fn.__version__}\n"


def test_bench_outside_a_source_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "SOURCE_ROOT", tmp_path / "site-packages")
    _user_error(runner.invoke(app, ["bench"]), "ship with the source", "git clone", "uv run reptile-fn bench")


# --- checkpoints, runs, paths ---------------------------------------------------------------------

def test_eval_takes_a_run_directory(tiny_run, tmp_path):
    by_dir = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--baselines", "random", "--speed-steps", "0",
                                 "--episodes", "3", "--json", str(tmp_path / "a.json"), "--out", str(tmp_path / "a")])
    by_file = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run / CHECKPOINT), "--baselines", "random",
                                  "--speed-steps", "0", "--episodes", "3", "--json", str(tmp_path / "b.json"),
                                  "--out", str(tmp_path / "b")])
    assert by_dir.exit_code == 0 and by_file.exit_code == 0, (by_dir.output, by_dir.exception)
    assert json.loads((tmp_path / "a.json").read_text())["inits"] == json.loads((tmp_path / "b.json").read_text())["inits"]
    assert str(tiny_run / CHECKPOINT) in by_dir.stdout


def test_eval_baselines_none_scores_the_meta_learned_init_alone(tiny_run, tmp_path):
    """--baselines none: the init's own cells (the same as beside a baseline), nothing pretrained or scored besides."""
    common = ["eval", "--checkpoint", str(tiny_run), "--speed-steps", "0", "--episodes", "3"]
    alone = runner.invoke(app, [*common, "--baselines", "none", "--json", str(tmp_path / "a.json"),
                                "--out", str(tmp_path / "a")])
    beside = runner.invoke(app, [*common, "--baselines", "random", "--json", str(tmp_path / "b.json"),
                                 "--out", str(tmp_path / "b")])
    assert alone.exit_code == 0 and beside.exit_code == 0, (alone.output, alone.exception)
    inits = json.loads((tmp_path / "a.json").read_text())["inits"]
    assert list(inits) == ["meta"]
    assert inits["meta"] == json.loads((tmp_path / "b.json").read_text())["inits"]["meta"]
    assert "random" not in alone.stdout and "pretraining" not in alone.output


@pytest.mark.parametrize("command", [["eval"], ["embed"], ["adapt", "--support", "s", "--query", "q"]])
def test_a_directory_without_a_checkpoint(tmp_path, command):
    (tmp_path / "notarun").mkdir()
    result = runner.invoke(app, [command[0], "--checkpoint", str(tmp_path / "notarun"), *command[1:]])
    _user_error(result, str(tmp_path / "notarun"), CHECKPOINT)


@pytest.mark.parametrize("content, what", [("", "empty"), ('{"eval": {"metric": "accuracy", "inits": {', "not valid JSON"),
                                           ("[1, 2]", "not a results table"), ('{"iteration": 3}', "not a results table")])
def test_compare_with_a_bad_summary_names_the_file_and_keeps_it(tiny_run, tmp_path, content, what):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / SUMMARY).write_text(content)
    result = runner.invoke(app, ["compare", str(tiny_run), str(bad)])
    message = _user_error(result, str(bad / SUMMARY), what, "leave")  # no checkpoint: --resume could not rewrite it
    assert "--resume" not in message
    assert (bad / SUMMARY).read_text() == content
    (bad / CHECKPOINT).write_bytes((tiny_run / CHECKPOINT).read_bytes())
    _user_error(runner.invoke(app, ["compare", str(tiny_run), str(bad)]), str(bad / SUMMARY), what, "--resume")


def test_compare_with_a_bad_eval_results_file(tiny_run, tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / SUMMARY).write_text((tiny_run / SUMMARY).read_text())
    (run / "eval" / "results.json").write_text("{")
    _user_error(runner.invoke(app, ["compare", str(run)]), str(run / "eval" / "results.json"), "reptile-fn eval")


@pytest.mark.parametrize("score", [float("nan"), 1e9, -0.5])
def test_compare_refuses_impossible_scores_in_a_results_file(tiny_run, tmp_path, score):
    """A damaged or hand-edited summary would show as 'nan ± nan' or an accuracy of 1.0e+11 %."""
    summary = json.loads((tiny_run / SUMMARY).read_text())
    summary["eval"]["inits"]["meta"]["metric"]["mean"][-1] = score
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / SUMMARY).write_text(json.dumps(summary))
    _user_error(runner.invoke(app, ["compare", str(tmp_path / "run")]), "not finite", "outside 0 to 1")


def _edit_summary(d, path, value):
    *parents, last = path.split(".")
    for k in parents:
        d = d[k]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value


_DELETE = object()


@pytest.mark.parametrize("path, value, what", [
    ("config", "hello", "config has no algorithm"), ("config", [1], "config has no algorithm"),
    ("config", {}, "config has no algorithm"), ("config.tasks", _DELETE, "config has no algorithm"),
    ("config.tasks.families", 5, "config.tasks lacks"), ("config.algorithm", None, "config has no algorithm"),
    ("eval.inits", {}, "no scored inits"), ("eval.inits.meta.steps", [], "no list of step counts"),
    ("eval.inits.meta.steps", ["a", "b", "c"], "no list of step counts"), ("eval.inner_steps", "zz", "not a count"),
    ("eval.inits.meta.metric.mean", [0.5], "for each step"), ("eval.inits.meta.episodes", -3, "episode count"),
    ("eval.inits.meta.metric.ci95", None, "for each step")])
def test_compare_refuses_a_damaged_results_file_naming_what_is_wrong(tiny_run, tmp_path, path, value, what):
    """Every field compare prints is checked first: these were tracebacks (TypeError, KeyError, IndexError) or
    silently wrong rows (an empty table, blank cells, 'None' as the algorithm)."""
    summary = json.loads((tiny_run / SUMMARY).read_text())
    if path == "eval.inits.meta.metric.ci95" and value is None:
        value = [-5.0] * len(summary["eval"]["inits"]["meta"]["steps"])
        what = "negative CI"
    _edit_summary(summary, path, value)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / SUMMARY).write_text(json.dumps(summary))
    _user_error(runner.invoke(app, ["compare", str(tmp_path / "run")]), "not a results table", what)


def test_compare_refuses_nested_json_a_pipe_and_a_folder_without_hanging(tiny_run, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"eval": ' + "[" * 100_000)
    _user_error(runner.invoke(app, ["compare", str(deep)]), "not valid JSON")
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / SUMMARY)
    _user_error(runner.invoke(app, ["compare", str(tmp_path / "fifo")]), "not a regular file", "move it away")
    (tmp_path / "d" / "eval" / "results.json").mkdir(parents=True)
    _user_error(runner.invoke(app, ["compare", str(tmp_path / "d")]), "is a folder", "move it away")


def test_compare_prints_regression_runs(tmp_path):
    """A regression run's curves hold 'loss', not 'metric': every sine run was refused as damaged."""
    out = tmp_path / "sine"
    result = runner.invoke(app, ["train", "--config", "sine", "--out", str(out), "--no-progress", *_sets(TINY)])
    assert result.exit_code == 0, result.output
    table = runner.invoke(app, ["compare", str(out)])
    assert table.exit_code == 0, table.output
    assert "query MSE" in table.stdout and "| meta |" in table.stdout


def test_compare_of_good_runs_still_works(tiny_run):
    result = runner.invoke(app, ["compare", str(tiny_run)])
    assert result.exit_code == 0 and "| meta |" in result.stdout


@pytest.mark.parametrize("name", ["od #2", "null", "~x", "123", "yes", "a: b"])
def test_data_dir_and_encoder_paths_are_taken_literally(tmp_path, name):
    """--data-dir and --encoder go into the config as JSON strings: never a YAML comment, null, number or bool."""
    path = tmp_path / name
    text = ["tasks.dataset=csv", "tasks.path=x.csv"]  # a data set that reads model.encoder
    cfg = C.load(None, text + cli_options._with_data_dir([], path, path))
    assert cfg.tasks.data_dir == str(path) and cfg.model.encoder == str(path)
    relative = C.load(None, text + cli_options._with_data_dir([], Path(name), Path(name)))
    assert relative.tasks.data_dir == name and relative.model.encoder == name


@pytest.mark.parametrize("name", ["od #2", "null"])
def test_data_dir_with_a_hash_or_named_null_reaches_the_loader(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "--set", "tasks.dataset=omniglot", "--data-dir", name])
    _user_error(result, f"{name}/omniglot/images_background.zip")  # not $REPTILE_FN_DATA, not a cut-off path


@pytest.mark.parametrize("args, message", [
    (["eval", "--checkpoint", "x", "--episodes", "0"], "error: Invalid value for '--episodes'"),
    (["train", "--bogus"], "error: No such option: --bogus"),
    (["eval"], "error: Missing option '--checkpoint'; see reptile-fn eval --help"),
    (["bogus"], "error: No such command 'bogus'"),
    (["validate", "--set", "inner_lr=nan"], "error: built-in default config with --set inner_lr=nan"),
    (["train", "--out", "", "--set", "meta_iterations=2"], "error: Invalid value for '--out' / '-o': Value error, it is empty"),
    (["eval", "--checkpoint", "omniglot-5w1s", "--json", " "], "error: Invalid value for '--json': Value error, it is empty"),
    # every path, not only outputs: an empty one would otherwise read or download into the working directory
    (["validate", "--config", ""], "error: Invalid value for '--config' / '-c': Value error, it is empty"),
    (["adapt", "--checkpoint", "omniglot-5w1s", "--support", "", "--query", "q"],
     "error: Invalid value for '--support': Value error, it is empty"),
    (["download", "omniglot", "--data-dir", ""], "error: Invalid value for '--data-dir': Value error, it is empty"),
    (["compare", "x", ""], "error: Invalid value for 'runs': Value error, it is empty"),
    (["train", "--out", "runs/new\nline"], "error: Invalid value for '--out' / '-o': Value error, 'runs/new\\nline' holds a "
                                           "control character"),    (["adapt", "--checkpoint", "omniglot-5w1s", "--support", "s", "--query", "q", "--out", "o\udcff"],  # byte 0xff
     "error: Invalid value for '--out': Value error, 'o\\udcff' is not valid UTF-8"),
])
def test_usage_errors_are_one_error_line_from_the_installed_command(args, message, tmp_path):
    """click's own errors (a bad option value, a missing or unknown option or command) and ours, through the
    console script's entry point (cli.main): one line, exit 2."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "from reptile_fn.cli import main; main()", *args],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written where the command ran


def test_a_usage_error_under_python_m_names_the_command_as_installed():
    """The hint read 'see reptile-fn -m reptile_fn adapt --help' when run as `python -m reptile_fn`."""
    done = subprocess.run([sys.executable, "-m", "reptile_fn", "adapt", "--steps", "x"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.rstrip().endswith("; see reptile-fn adapt --help"), done.stderr


def test_every_shipped_init_has_a_model_card_that_info_prints():
    from typer.testing import CliRunner

    from reptile_fn import pretrained
    from reptile_fn.cli import app

    for name in pretrained.names():
        card = pretrained.card(name)
        assert card is not None and card["name"] == name, name
        assert {"task", "protocol", "training", "scores", "evaluate", "notes"} <= set(card)
        assert all({"split", "episodes", "mode", "accuracy", "ci95", "steps"} <= set(s) for s in card["scores"])
        out = CliRunner().invoke(app, ["info", "--checkpoint", name])
        assert out.exit_code == 0 and f"{name}: " in out.output and "score " in out.output and "check " in out.output
    assert pretrained.card(pretrained.HERE / "nonexistent.safetensors") is None


# --- output folders -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "eval", "embed"])
def test_an_out_that_is_a_file_is_refused_before_the_work(tiny_run, tmp_path, command):
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    args = {"train": ["train", *_sets(TINY)], "eval": ["eval", "--checkpoint", str(tiny_run)],
            "embed": ["embed", "--checkpoint", str(tiny_run), "--tasks", "4"]}[command]
    _user_error(runner.invoke(app, [*args, "--out", str(blocker)]), f"--out {blocker} is a file")
    _user_error(runner.invoke(app, [*args, "--out", str(blocker / "sub")]), f"{blocker} is a file")
    assert blocker.read_text() == "keep me"


def test_an_output_file_name_taken_by_a_folder_is_refused_and_nothing_is_written(tiny_run, tmp_path):
    (tmp_path / "out" / "task_embeddings.png").mkdir(parents=True)
    message = _user_error(runner.invoke(app, ["embed", "--checkpoint", str(tiny_run), "--tasks", "4", "--out",
                                              str(tmp_path / "out")]), "task_embeddings.png is a folder")
    assert "another folder" in message
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["task_embeddings.png"]  # no embed.json


def test_sigterm_during_eval_is_one_error_line_and_exit_143(tiny_run, tmp_path):
    """A scheduler's stop outside training: one line, no traceback, no half-written results."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crash names its frames
    proc = subprocess.Popen([sys.executable, "-c", "from reptile_fn.cli import main; main()", "eval", "--checkpoint",
                             str(tiny_run), "--episodes", "1000000", "--out", str(tmp_path / "ev")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(8)  # past start-up, inside the evaluation
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]  # progress lines, then the error
    assert lines[-1].startswith("error: stopped by SIGTERM") and "Traceback" not in err, err
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not (tmp_path / "ev" / "results.json").exists()


@pytest.mark.parametrize("command", [["validate"], ["validate", "--set", "seed=-1"]])
def test_a_command_settles_mlx_before_the_process_exits(command):
    """MLX asks a process to synchronize and free its streams before exiting (its own teardown comes after the
    interpreter's); once, after a failed command too. A stop during an evaluation once exited by segfault."""
    code = ("import mlx.core as mx\n"
            "mx.clear_streams = lambda: print('streams cleared', file=__import__('sys').stderr)\n"
            "from reptile_fn.cli import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, timeout=120)
    assert done.returncode == (2 if "seed=-1" in command else 0), done.stderr
    assert done.stderr.count("streams cleared") == 1, done.stderr


def test_embed_way_is_for_omniglot_runs(tiny_run, tmp_path):
    _user_error(runner.invoke(app, ["embed", "--checkpoint", str(tiny_run), "--way", "3", "--out", str(tmp_path)]),
                "drop --way")


@pytest.mark.parametrize("args, needle", [(["--split", ""], "--split is empty"),
                                          (["--split", "test", "--set", "tasks.test_split=val"], "give one of them"),
                                          (["--baselines", ""], "--baselines '' has an empty entry"),
                                          (["--baselines", "none,random"], "or none alone")])
def test_eval_split_must_be_one_clear_choice(tiny_run, tmp_path, args, needle):
    _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--out", str(tmp_path), *args]), needle)


def test_a_checkpoint_whose_stored_config_has_an_unknown_key_is_not_a_typo(tiny_run, tmp_path):
    from reptile_fn import checkpoint as ck
    from mlx.utils import tree_unflatten

    arrays, meta = ck.load(tiny_run / "checkpoint.safetensors")
    params = tree_unflatten([(k[len("params."):], v) for k, v in arrays.items() if k.startswith("params.")])
    state = tree_unflatten([(k[len("state."):], v) for k, v in arrays.items() if k.startswith("state.")])
    meta["config"]["tasks"]["bogus_key"] = 1
    ck.save(tmp_path / "checkpoint.safetensors", params, state, meta)
    message = _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "ev")]),
                          "'tasks.bogus_key'", "another version of reptile_fn")
    assert "did you mean" not in message


def test_an_unknown_shipped_name_is_quoted_plainly():
    message = _user_error(runner.invoke(app, ["eval", "--checkpoint", "omniglot-7w1s"]), "'omniglot-7w1s' is neither")
    assert "PosixPath" not in message


def test_compare_refuses_a_run_twice_and_labels_each_runs_last_step(tiny_run, tmp_path):
    _user_error(runner.invoke(app, ["compare", str(tiny_run), str(tiny_run)]), "given twice")
    _user_error(runner.invoke(app, ["compare", str(tiny_run), str(tiny_run / SUMMARY)]),  # a run and its own results
                f"{tiny_run / SUMMARY} and {tiny_run} are the same results")
    table = [line for line in runner.invoke(app, ["compare", str(tiny_run)]).stdout.splitlines() if line.startswith("|")]
    steps = C.load(None, TINY).eval.inner_steps
    assert "| last step | last |" in table[0] and table[2].endswith(f"| {steps} |")


@pytest.mark.parametrize("item, needle", [("tasks=5", "tasks is a section"), ("inner_lr=", "no value after '='"),
                                          ("foo=1", "README's key table")])
def test_set_mistakes_name_their_fix(item, needle):
    _user_error(runner.invoke(app, ["validate", "--set", item]), needle)


def test_info_of_something_without_a_model_card_is_an_error(tiny_run):
    for checkpoint in ("", str(tiny_run / "checkpoint.safetensors"), str(tiny_run)):
        result = runner.invoke(app, ["info", "--checkpoint", checkpoint])
        _user_error(result, "has no model card" if checkpoint else "is empty")
        assert result.stdout == ""  # nothing printed before the error (the info block came first)
    _user_error(runner.invoke(app, ["info", "--set", "peft.method=lora", "--set", "peft.targets=[nomatch*]"]), "no parameter")
    missing = tiny_run / "omniglot-5w1s.safetensors"
    _user_error(runner.invoke(app, ["info", "--checkpoint", str(missing)]), f"{missing} does not exist", "shipped initialization")


def test_a_checkpoint_under_another_extension_loads_and_a_missing_query_is_named(tiny_run, tmp_path):
    """A safetensors checkpoint copied as .bin is the same checkpoint (MLX would pick the reader by extension and call
    it corrupt); a --query that does not exist is missing, not 'not a readable zip'."""
    from reptile_fn import checkpoint as ck

    copy = tmp_path / "ck.bin"
    copy.write_bytes((tiny_run / CHECKPOINT).read_bytes())
    assert ck.load(copy)[1] == ck.load(tiny_run / CHECKPOINT)[1]
    from PIL import Image

    for c in "ab":
        (tmp_path / "sup" / c).mkdir(parents=True)
        Image.new("L", (28, 28), 40 if c == "a" else 200).save(tmp_path / "sup" / c / "x.png")
    result = runner.invoke(app, ["adapt", "--checkpoint", "omniglot-5w1s", "--support", str(tmp_path / "sup"), "--query",
                                 str(tmp_path / "nothere.png"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.stderr.splitlines()[-1].startswith("error: ")  # after the support's progress
    assert "nothere.png does not exist; check the path" in result.stderr


def test_a_checkpoint_whose_parameters_became_integers_is_refused(tiny_run, tmp_path):
    from mlx.utils import tree_unflatten

    from reptile_fn import checkpoint as ck

    arrays, meta = ck.load(tiny_run / "checkpoint.safetensors")
    params = tree_unflatten([(k[len("params."):], v.astype(mx.int32)) for k, v in arrays.items() if k.startswith("params.")])
    state = tree_unflatten([(k[len("state."):], v) for k, v in arrays.items() if k.startswith("state.")])
    ck.save(tmp_path / "checkpoint.safetensors", params, state, meta)
    _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "ev")]),
                "holds int32 values")


def test_eval_json_is_checked_before_the_work_and_divergence_is_an_error(tiny_run, tmp_path):
    (tmp_path / "taken").mkdir()
    _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "ev"), "--json",
                                    str(tmp_path / "taken")]), "--json", "taken is a folder")
    result = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "ev"), "--baselines",
                                 "random", "--speed-steps", "0", "--set", "eval.inner_lr=1e30"])
    last = result.stderr.strip().splitlines()[-1]  # after the evaluation's progress lines
    assert result.exit_code == 2 and last.startswith("error: adaptation diverged") and "lower eval.inner_lr" in last
    assert not (tmp_path / "ev" / "results.json").exists()


def test_bench_script_messages_reach_the_user_as_one_error_line():
    if mx.cuda.is_available() or mx.metal.is_available():
        pytest.skip("a GPU is here, so --device gpu is valid")
    _user_error(runner.invoke(app, ["bench", "--device", "gpu"]), "--device gpu")


@pytest.mark.parametrize("sizes, needle", [("W1:100000000", "100,000,000 is above 1,024"), ("W1:" + "9" * 5000, "is not a comma list"),
                                           ("W9:5", "unknown workload 'W9'")])
def test_bench_sizes_are_bounded_before_anything_is_allocated(sizes, needle):
    """A meta-batch of 10^8 sine tasks had taken 21 GB in 15 s before the kernel killed it."""
    _user_error(runner.invoke(app, ["bench", "--workloads", "W1", "--sizes", sizes, "--quick"]), needle)


def test_bench_help_lists_the_benchmarks_own_options():
    """`reptile-fn bench --help` is the script's help (its options), under the command's name."""
    res = runner.invoke(app, ["bench", "--help"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("usage: reptile-fn bench") and all(o in res.output for o in ("--peers", "--workloads",
                                                                                              "--json", "--sizes"))
    _user_error(runner.invoke(app, ["bench", "--no-such-option"]), "--no-such-option; `reptile-fn bench --help`")


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`reptile-fn info | head -1`: once the reader has gone, the command stops with the shell's status for a
    closed pipe (141) and no error line or traceback."""
    proc = subprocess.Popen([sys.executable, "-c", "from reptile_fn.cli import main; main()", "info", "--checkpoint",
                             "omniglot-5w1s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # before the command has printed anything (it starts in ~0.5 s)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


@pytest.mark.parametrize("run, item", [(None, "seed=3"), ("omniglot-5w1s", "tasks.protocol=alphabets"),
                                       ("omniglot-5w1s", "seed=1")])
def test_eval_refuses_a_set_that_moves_the_held_out_split(tiny_run, tmp_path, run, item):
    """The seed shuffles the class split (and builds the init); the protocol and fractions draw it: changed at
    evaluation, "held-out" episodes would draw classes the run meta-trained on (refused before any data is read)."""
    _user_error(runner.invoke(app, ["eval", "--checkpoint", run or str(tiny_run), "--out", str(tmp_path / "ev"), "--set",
                                    item]), f"{item.split('=')[0]} = ", "would change which classes are held out")
    assert not (tmp_path / "ev").exists()


def test_compare_reports_what_was_evaluated_and_tells_runs_apart(tiny_run, tmp_path):
    """An `eval` with other settings is labelled with them (k_shot, the last step evaluated), not the training
    config's; an eval folder or a results file compares directly; non-synthetic tasks show their dataset and way;
    same-named runs show their paths, and a '|' in a name cannot split the table."""
    import shutil

    run = tmp_path / "x" / "a|b"
    shutil.copytree(tiny_run, run)
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--set", "tasks.k_shot=1", "--steps", "3",
                                 "--baselines", "random", "--speed-steps", "0"])
    assert result.exit_code == 0, result.output
    shutil.copytree(tiny_run, tmp_path / "y" / "a|b")
    table = [line for line in runner.invoke(app, ["compare", str(run), str(tmp_path / "y" / "a|b")]).stdout.splitlines()
             if line.startswith("| ")]
    first = next(line for line in table if line.startswith(f"| {str(run).replace('|', chr(92) + '|')} |"))
    assert "| 1 | meta |" in first and first.endswith("| 3 |")  # k_shot 1, last step 3, as evaluated
    assert any(line.startswith(f"| {tmp_path / 'y' / 'a'}\\|b |") for line in table)
    assert all(line.replace("\\|", "").count("|") == 13 for line in table)  # 12 columns in every row
    results = json.loads((run / "eval" / "results.json").read_text())
    results["config"]["tasks"].update(dataset="omniglot", n_way=20)
    (tmp_path / "other.json").write_text(json.dumps(results))
    rows = runner.invoke(app, ["compare", str(tmp_path / "other.json"), str(run / "eval")]).stdout
    episodes = results["inits"]["meta"]["episodes"]
    assert f"| other.json | reptile | omniglot 20-way | test | {episodes} | 1 | meta |" in rows
    assert f"| eval | reptile | linear, xor, circles, spiral |  | {episodes} | 1 | meta |" in rows


def test_eval_scores_its_own_k_under_the_speed_horizon_and_compare_shows_it(tiny_run, tmp_path):
    """`eval --steps 13` with the default 100-step speed horizon: past step 10 the horizon's curve records every 5th
    step only, yet K = 13 is scored, printed and the speed target; `compare` shows step 13, not the horizon's 100."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--steps", "13", "--episodes", "4",
                                 "--baselines", "random"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "13 steps" in result.stdout and "100 steps" in result.stdout and "meta after 13 steps" in result.stdout
    ev = json.loads((run / "eval" / "results.json").read_text())
    assert ev["inner_steps"] == 13 and 13 in ev["inits"]["meta"]["steps"]
    row = next(line for line in runner.invoke(app, ["compare", str(run / "eval")]).stdout.splitlines()
               if "| meta |" in line)
    at13 = ev["inits"]["meta"]["metric"]["mean"][ev["inits"]["meta"]["steps"].index(13)]
    assert row.endswith("| 13 |") and f"{100 * at13:.2f} ±" in row


def test_eval_says_nothing_it_cannot_measure(tiny_run, tmp_path):
    """One episode has no interval (not "± 0.00"); after 0 steps there is no adaptation speed to compare (it was
    "0 steps, 0.0x" for every init); a split the run's data set does not have is refused, not ignored."""
    one = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "a"), "--episodes", "1",
                              "--baselines", "random", "--speed-steps", "0"])
    assert one.exit_code == 0 and "no 95% CI from one episode" in one.stdout and "±" not in one.stdout
    zero = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "b"), "--steps", "0",
                               "--episodes", "5", "--baselines", "random"])
    assert zero.exit_code == 0 and "adaptation speed" not in zero.stdout
    assert "speed" not in json.loads((tmp_path / "b" / "results.json").read_text())
    _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "c"), "--split", "val"]),
                "tasks.test_split = 'val' is read only when tasks.dataset is")


def test_a_set_that_rebuilds_another_model_is_named_as_the_cause(tiny_run, tmp_path):
    """`eval --set algorithm=maml` builds an optimizer state the checkpoint lacks: the error says the --set did it."""
    _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "ev"), "--set",
                                    "algorithm=maml", "--set", "outer_optimizer=adam"]),
                "(after algorithm=maml outer_optimizer=adam: the run was trained without them")


def test_messages_name_the_fix_the_user_can_take(tiny_run, tmp_path):
    """--json given a folder asks for a file in it; an image run given a CSV says so; a value that must be positive
    says what to write instead; a value in the wrong case is suggested in the right one."""
    (tmp_path / "folder").mkdir()
    _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "ev"), "--json",
                                    str(tmp_path / "folder")]), "folder is a folder", "folder/results.json")
    (tmp_path / "x.csv").write_text("text,label\nhi,a\n")
    _user_error(runner.invoke(app, ["eval", "--checkpoint", "omniglot-5w1s", "--out", str(tmp_path / "ev"), "--data",
                                    str(tmp_path / "x.csv")]), "is a text file, but this is an image run")
    _user_error(runner.invoke(app, ["eval", "--checkpoint", "minilm-intent-lora", "--out", str(tmp_path / "ev"), "--data",
                                    str(tmp_path / "folder")]), "is a folder, but this is a text run; pass a CSV file")
    _user_error(runner.invoke(app, ["validate", "--set", "eval.every=0"]), "set it to meta_iterations or more")
    _user_error(runner.invoke(app, ["validate", "--set", "algorithm=REPTILE"]), "did you mean 'reptile'?")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("targets, needle", [("[nomatch*]", "no parameter matches targets (peft.targets)"),
                                             ("[layer*.b]", "only weights with 2+ dimensions")])
def test_lora_targets_that_fit_no_weight_are_one_error(targets, needle):
    for command in ("validate", "info"):
        _user_error(runner.invoke(app, [command, "--set", "peft.method=lora", "--set", f"peft.targets={targets}"]), needle)


@pytest.mark.parametrize("args, needle", [(["--variants", "bogus"], "'bogus' is not one of them; use a comma list of serial"),
                                          (["--algorithms", "x"], "'x' is not one of them; use a comma list of reptile"),
                                          (["--fuse", "0"], "--fuse 0: it must be > 0"),
                                          (["--repeats", "0", "--quick"], "--repeats 0: it must be > 0"),
                                          (["--workloads", "W1,W9"], "--workloads 'W1,W9': 'W9' is not one of them"),
                                          (["--fuse", "100000"], "--fuse 100,000: above 1,000"),
                                          (["--json", ""], "--json is empty")])
def test_bench_options_it_passes_on_are_checked(args, needle):
    """An unknown variant was timed as vmap+compile under its own name; an unknown algorithm, --fuse 0 and
    --repeats 0 were tracebacks; an unknown workload after a list's first was found only once the first was timed;
    --fuse 100000 compiled for minutes; an empty --json was taken for the working directory."""
    _user_error(runner.invoke(app, ["bench", "--workloads", "W1", *args]), needle)


def test_compare_labels_an_older_results_file_with_what_it_records(tiny_run, tmp_path):
    """A results file without a stored config (older `eval --json`) takes the algorithm and data set from its run,
    but its own k_shot, and no guessed split; if that run folder is gone the error says so (not 'nothing to resume')."""
    result = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--set", "tasks.k_shot=1", "--steps", "2",
                                 "--baselines", "random", "--speed-steps", "0", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "ev" / "results.json").read_text())
    data.pop("config")
    data["k_shot"] = 1
    (tmp_path / "old.json").write_text(json.dumps(data))
    rows = runner.invoke(app, ["compare", str(tmp_path / "old.json")]).stdout
    assert f"| old.json | reptile | linear, xor, circles, spiral | ? | {data['inits']['meta']['episodes']} | 1 | meta |" in rows
    data["checkpoint"] = str(tmp_path / "gone" / "checkpoint.safetensors")
    (tmp_path / "orphan.json").write_text(json.dumps(data))
    _user_error(runner.invoke(app, ["compare", str(tmp_path / "orphan.json")]), "records no config",
                str(tmp_path / "gone"))


def test_json_output_never_replaces_a_file_that_is_not_a_json_results_file(tmp_path):
    """`eval --json` given a run's checkpoint (or config, or a data file) by mistake refuses before any work, and
    the file is untouched; an earlier results file may be replaced."""
    from reptile_fn import io
    from reptile_fn.errors import OutputError

    checkpoint = tmp_path / CHECKPOINT
    checkpoint.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + bytes(64))
    before = checkpoint.read_bytes()
    _user_error(runner.invoke(app, ["eval", "--checkpoint", "omniglot-5w1s", "--json", str(checkpoint)]),
                f"--json {checkpoint} exists and is not a JSON results file")
    assert checkpoint.read_bytes() == before
    for name, text in (("config.yaml", "seed: 0\n"), ("data.json", "[1, 2]"), ("rows.csv", "{not json")):
        (tmp_path / name).write_text(text)
        with pytest.raises(OutputError, match="not a JSON results file"):
            io.check_json_out(tmp_path / name)
    (tmp_path / "old.json").write_text('  {"accuracy": 0.5}')
    assert io.check_json_out(tmp_path / "old.json") == tmp_path / "old.json"
    assert io.check_json_out(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    with pytest.raises(OutputError, match=f"--json {tmp_path} is a folder; pass the JSON file to write"):
        io.check_json_out(tmp_path)


def test_eval_results_are_not_written_into_another_runs_folder(tiny_run, tmp_path):
    """`compare OTHER` would have shown these results under the other run's name."""
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tiny_run / CHECKPOINT, other / CHECKPOINT)
    _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--episodes", "2", "--out", str(other)]),
                f"--out {other} is another run's folder")
    assert sorted(p.name for p in other.iterdir()) == [CHECKPOINT]
    mine = shutil.copytree(tiny_run, tmp_path / "mine")
    own = runner.invoke(app, ["eval", "--checkpoint", str(mine), "--episodes", "2", "--steps", "1", "--speed-steps", "0",
                              "--baselines", "none", "--out", str(mine)])
    assert own.exit_code == 0, own.output  # its own folder is fine


def test_eval_with_a_changed_meta_iterations_is_not_called_a_damaged_checkpoint(tiny_run, tmp_path):
    """The checkpoint's iteration is checked against the run's own schedule, not the --set one."""
    res = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run), "--episodes", "2", "--steps", "1", "--speed-steps", "0",
                              "--baselines", "none", "--set", "meta_iterations=1", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0 and "edited or damaged" not in res.output, res.output


def test_ctrl_c_while_the_command_line_loads_or_parses_is_one_error_line(monkeypatch, capsys):
    """Before a command's own handling begins: while reptile_fn.cli imports (typer, MLX), and while typer parses
    (it turned a Ctrl-C into a silent status 130)."""
    import types

    import typer

    loading = types.ModuleType("reptile_fn.cli")

    def interrupted(name):
        raise KeyboardInterrupt

    loading.__getattr__ = interrupted
    monkeypatch.setitem(sys.modules, "reptile_fn.cli", loading)
    from reptile_fn.__main__ import main

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 130
    assert capsys.readouterr().err == "error: stopped by Ctrl-C (SIGINT) while starting; nothing was done\n"
    monkeypatch.setitem(sys.modules, "reptile_fn.cli", cli)
    monkeypatch.setattr(sys, "argv", ["reptile-fn", "info"])
    monkeypatch.setattr(typer.core.TyperGroup, "make_context", lambda *a, **k: interrupted(""))
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: stopped by Ctrl-C (SIGINT) before the command began; nothing was done"]


@pytest.mark.parametrize("argv0, status", [("/venv/bin/reptile-fn", 130), ("script.py", -2)])  # -2: killed by SIGINT
def test_ctrl_c_while_the_package_loads_blas_is_one_line_for_the_console_script_only(argv0, status):
    """The first ~0.1 s (OpenBLAS loading in reptile_fn/__init__) was a traceback; a user's own script importing
    the package still sees its KeyboardInterrupt."""
    code = ("import sys, types\n"
            "blas = types.ModuleType('reptile_fn._blas')\n"
            "def load(): raise KeyboardInterrupt\n"
            "blas.load = load\n"
            "sys.modules['reptile_fn._blas'] = blas\n"
            f"sys.argv[0] = {argv0!r}\n"
            "import reptile_fn\n")
    done = subprocess.run([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == status, done.stderr
    if status == 130:
        assert done.stderr == "error: stopped by Ctrl-C (SIGINT) while starting; nothing was done\n"
    else:
        assert "KeyboardInterrupt" in done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("command", [["info"], ["validate"], ["--help"], ["--version"], ["compare", "--help"],
                                     ["bench", "--help"]])  # argparse's help swallowed the error: exit 0, no line
def test_output_that_cannot_be_written_names_standard_output(command):
    """`reptile-fn … > /dev/full` (or onto a full disk): the error says it is standard output that could not be
    written, not a bare 'No space left on device' with 'check the path', and no second error at exit."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "reptile_fn", *command], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("error: cannot write standard output (No space left on device); check the file or device "
                           "it is redirected to, and its free space\n")


def test_a_printing_script_s_stdout_failure_is_named_as_standard_output(monkeypatch):
    """print() leaves no frame naming standard output: `bench > /dev/full` was a generic 'check the path' line."""
    import errno
    import io

    from reptile_fn.cli_options import printing

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys, "stdout", Full())
    with pytest.raises(OSError) as e:
        printing(print, "a table")
    assert e.value.stdout is True and e.value.errno == errno.ENOSPC
    assert printing(lambda: 7) == 7 and not hasattr(OSError(), "stdout")


def test_paths_pathlib_cannot_resolve_are_one_error_line(tmp_path):
    """An unknown ~user and symbolic links that point at each other were RuntimeError tracebacks from pathlib."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for args, needle in ((["embed", "--checkpoint", "~no_such_user_here/x"], "~user"),
                         (["download", "omniglot", "--data-dir", "~no_such_user_here/x"], "~user"),
                         (["train", "--out", str(tmp_path / "a")], str(tmp_path / "a"))):
        done = subprocess.run([sys.executable, "-c", "from reptile_fn.cli import main; main()", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert needle in lines[0] and "Traceback" not in done.stderr


def test_a_missing_checkpoint_file_is_named_without_talk_of_resuming(tmp_path):
    for command in (["embed"], ["eval"]):
        message = _user_error(runner.invoke(app, [*command, "--checkpoint", str(tmp_path / "x.safetensors")]),
                              "does not exist", "shipped initialization")
        assert "resume" not in message


def test_a_json_output_never_replaces_a_runs_own_results(tiny_run, tmp_path):
    from reptile_fn import io
    from reptile_fn.errors import OutputError

    for own in (tiny_run / SUMMARY, tiny_run / "eval" / "results.json"):
        own.parent.mkdir(exist_ok=True)
        if not own.exists():
            own.write_text("{}")
        with pytest.raises(OutputError, match="results file of the run"):
            io.check_json_out(own)
    (tmp_path / "summary.json").write_text("{}")  # not a run's: an earlier JSON file may be replaced
    assert io.check_json_out(tmp_path / "summary.json") == tmp_path / "summary.json"


def test_plots_stay_quiet_when_matplotlibs_config_folder_cannot_be_written(tmp_path):
    """HOME=/dev/null (a service account, a sandbox): matplotlib printed two lines about its config folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
    env["HOME"] = "/dev/null"
    done = subprocess.run([sys.executable, "-c", "import reptile_fn.plots, os; print(os.environ['MPLCONFIGDIR'])"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert not Path(done.stdout.strip()).exists()  # the private folder is removed at exit


@pytest.mark.parametrize("config", ['"hello"', "[1, 2]"])
def test_a_checkpoint_whose_stored_config_is_not_a_mapping_says_it_is_damaged(tiny_run, tmp_path, config):
    arrays, meta = mx.load(str(tiny_run / CHECKPOINT), return_metadata=True)
    mx.save_safetensors(str(tmp_path / CHECKPOINT), arrays, {**meta, "config": config})
    _user_error(runner.invoke(app, ["eval", "--checkpoint", str(tmp_path)]), "damaged", "written by `reptile-fn train`")
