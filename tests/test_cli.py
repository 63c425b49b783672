"""The reptile-fn command line: info, validate, train, eval; user mistakes give one 'error:' line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from typer.testing import CliRunner

from reptile_fn import _blas, _malloc
from reptile_fn import config as C
from reptile_fn.algorithms import ALGORITHMS
from reptile_fn.cli import app
from reptile_fn.tasks import FAMILIES
from reptile_fn.run import CHECKPOINT, METRICS, SUMMARY

from conftest import TINY

runner = CliRunner()


def _set_args(items) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _assert_user_error(result, *needles: str) -> str:
    """Exit status 2 from our handler, exactly one 'error: …' line naming the problem, no traceback."""
    output = result.output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    # our handler exits cleanly; anything else (an escaped exception) would be stored here
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert errors[0] in result.stderr.splitlines()  # on stderr, not stdout
    assert "error:" not in result.stdout
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _table(output: str) -> list[str]:
    """The results table printed by train and eval: its header line, column line and one row per init."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "held-out episodes" in line)
    return lines[start:start + 4]


# --- info, validate -----------------------------------------------------------------------------

def test_info():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    rows = {line.split(None, 1)[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert mx.__version__ in rows["mlx"]
    assert rows["blas"].split(None, 1)[1] == _blas.status()
    assert rows["malloc"].split(None, 1)[1] == _malloc.status()
    families = next(line for line in result.stdout.splitlines() if line.startswith("task families"))
    for name, family in FAMILIES.items():
        assert f"{name} ({family.kind})" in families
    algorithms = next(line for line in result.stdout.splitlines() if line.startswith("algorithms"))
    for name in ALGORITHMS:
        assert name in algorithms


def test_no_arguments_shows_help():
    result = runner.invoke(app, [])
    for command in ("info", "validate", "train", "eval"):
        assert command in result.output


def test_validate_default():
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert "config OK" in result.stdout
    assert C.Config().algorithm in result.stdout


def test_validate_default_yaml_file():
    path = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    if not path.exists():
        pytest.skip("configs/default.yaml does not exist (yet)")
    result = runner.invoke(app, ["validate", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert str(path) in result.stdout


def test_validate_with_overrides():
    result = runner.invoke(app, ["validate", "--set", "tasks.families=[sine]", "-s", "k_shot=10", "--set", "hidden=8"])
    assert result.exit_code == 0, result.output
    assert "sine" in result.stdout and "regression" in result.stdout


BAD_SETS = [
    (["inner_lrr=0.1"], ["inner_lrr", "did you mean 'inner_lr'"]),
    (["tasks.kshot=3"], ["tasks.kshot", "did you mean 'tasks.k_shot'"]),
    (["k_shot"], ["KEY=VALUE"]),
    (["k_shot=abc"], ["tasks.k_shot"]),
    (["k_shot=true"], ["tasks.k_shot"]),
    (["inner_lr=[0.1, 0.2]"], ["inner_lr"]),
    (["meta_iterations=0"], ["meta_iterations"]),
    (["k_shot=0"], ["tasks.k_shot"]),
    (["inner_steps=-1"], ["inner_steps"]),
    (["inner_lr=0"], ["inner_lr"]),
    (["outer_lr=-1"], ["outer_lr"]),
    (["families=[sin]"], ["'sin'", "did you mean 'sine'"]),
    (["families=[sine, xor]"], ["tasks.families"]),
    (["algorithm=reptil"], ["algorithm", "reptile"]),
    (["inner_optimizer=adamw"], ["inner_optimizer"]),
    (["outer_optimizer=rmsprop"], ["outer_optimizer"]),
]


@pytest.mark.parametrize("items, needles", BAD_SETS, ids=[" ".join(i) for i, _ in BAD_SETS])
def test_validate_bad_set(items, needles):
    result = runner.invoke(app, ["validate", *_set_args(items)])
    _assert_user_error(result, *needles)


BAD_FILES = [
    ("inner_lrr: 0.1\n", ["inner_lrr", "inner_lr"]),
    ("tasks: {kshot: 3}\n", ["tasks.kshot", "tasks.k_shot"]),
    ("tasks:\n  k_shot: five\n", ["tasks.k_shot"]),
    ("meta_iterations: 0\n", ["meta_iterations"]),
    ("tasks:\n  families: [sine, linear]\n", ["tasks.families"]),
    ("algorithm: maml2\n", ["algorithm"]),
    ("inner_lr: [0.1, 0.2\n", ["YAML"]),
    ("- just\n- a list\n", ["mapping"]),
]


@pytest.mark.parametrize("text, needles", BAD_FILES,
                         ids=["typo", "typo-in-section", "type", "zero", "mixed-families", "algorithm", "syntax", "list"])
def test_validate_bad_file(tmp_path, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["validate", "--config", str(path)])
    _assert_user_error(result, str(path), *needles)


def test_validate_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    result = runner.invoke(app, ["validate", "--config", str(path)])
    _assert_user_error(result, str(path), "does not exist")


def test_validate_refuses_a_config_that_diverges_at_once():
    result = runner.invoke(app, ["validate", "--set", "inner_lr=1000000.0"])
    _assert_user_error(result, "NaN")


def test_train_refuses_bad_config_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--no-progress", *_set_args(TINY), "--set", "kshot=2"])
    _assert_user_error(result, "kshot", "tasks.k_shot")
    assert not out.exists()


def test_error_output_of_the_real_program_has_no_traceback():
    """The same through a real process: stderr holds one line, stdout nothing."""
    code = "import sys; from reptile_fn.cli import app; sys.argv[0] = 'reptile-fn'; app()"
    proc = subprocess.run([sys.executable, "-c", code, "validate", "--set", "inner_lrr=0.1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "'inner_lrr'" in lines[0] and "'inner_lr'" in lines[0]


# --- train and eval -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--no-progress", *_set_args(TINY)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result


def test_train_writes_the_run(cli_run):
    out, result = cli_run
    for name in (CHECKPOINT, METRICS, SUMMARY, "config.yaml"):
        assert (out / name).is_file(), name
    assert C.load(out / "config.yaml") == C.load(None, TINY)
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["iteration"] == C.load(None, TINY).meta_iterations
    assert f"trained {summary['iteration']} meta-iterations" in result.stdout
    assert str(out) in result.stdout


def test_train_prints_results_table(cli_run):
    out, result = cli_run
    table = _table(result.stdout)
    assert "query accuracy (%)" in table[0]
    assert table[1].split()[0] == "init"
    rows = {line.split()[0]: line for line in table[2:]}
    assert set(rows) == {"meta", "random"}
    # the numbers are the ones in summary.json
    ev = json.loads((out / SUMMARY).read_text())["eval"]
    for name, line in rows.items():
        m = ev["inits"][name]["metric"]
        last = ev["inits"][name]["steps"][-1]
        assert line.rstrip().endswith(f"{100 * m['mean'][last]:.2f} ± {100 * m['ci95'][last]:.2f}")


def test_eval_prints_the_same_numbers_as_train(cli_run, tmp_path):
    out, train_result = cli_run
    json_path = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--checkpoint", str(out / CHECKPOINT), "--json", str(json_path),
                                 "--baselines", "random", "--speed-steps", "0", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert _table(result.stdout) == _table(train_result.stdout)
    assert "meta-iteration 20" in result.stdout
    stored = json.loads(json_path.read_text())
    assert {k: v for k, v in stored.items() if k not in ("checkpoint", "iteration", "config")} == \
        json.loads((out / SUMMARY).read_text())["eval"]
    # the default eval (more baselines, a longer horizon) repeats the same meta and random cells
    default = runner.invoke(app, ["eval", "--checkpoint", str(out / CHECKPOINT), "--out", str(tmp_path / "ev2"),
                                  "--speed-steps", "20"])
    assert default.exit_code == 0, (default.output, default.exception)
    trained_rows = {line.split()[0]: line for line in _table(train_result.stdout)[2:]}
    for line in _table(default.stdout)[2:]:
        if line.split()[0] in trained_rows:
            assert line.startswith(trained_rows[line.split()[0]])


def test_eval_with_fewer_episodes_and_steps(cli_run, tmp_path):
    out, _ = cli_run
    json_path = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--checkpoint", str(out / CHECKPOINT), "--episodes", "7", "--steps", "3",
                                 "--json", str(json_path), "--speed-steps", "0", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, (result.output, result.exception)
    ev = json.loads(json_path.read_text())
    for curve in ev["inits"].values():
        assert curve["episodes"] == 7
        assert curve["steps"] == [0, 1, 2, 3]
    assert "7 held-out episodes" in result.stdout
    assert "3 steps" in result.stdout and "10 steps" not in result.stdout


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "foreign"])
def test_eval_bad_checkpoint(cli_run, tmp_path, kind):
    out, _ = cli_run
    path = tmp_path / "c.safetensors"
    if kind == "garbage":
        path.write_bytes(b"\x00garbage" * 20)
    elif kind == "truncated":
        path.write_bytes((out / CHECKPOINT).read_bytes()[:200])
    elif kind == "foreign":
        mx.save_safetensors(str(path), {"weight": mx.ones((2,))})
    _assert_user_error(runner.invoke(app, ["eval", "--checkpoint", str(path)]), str(path))


def test_train_into_an_existing_run_without_resume_fails_and_keeps_it(cli_run, tmp_path):
    src, _ = cli_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
    result = runner.invoke(app, ["train", "--out", str(out), "--no-progress", *_set_args(TINY), "--set", "seed=1"])
    _assert_user_error(result, str(out), "--resume")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()} == before


def test_train_resume_of_a_finished_run_keeps_its_results(cli_run, tmp_path):
    src, train_result = cli_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "resuming" in result.stdout
    assert _table(result.stdout) == _table(train_result.stdout)
    assert (out / CHECKPOINT).read_bytes() == (src / CHECKPOINT).read_bytes()


def test_train_resume_without_a_run(tmp_path):
    out = tmp_path / "nothing"
    _assert_user_error(runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-progress"]), "resume")


def test_train_resume_with_a_different_config(cli_run, tmp_path):
    src, _ = cli_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = (out / CHECKPOINT).read_bytes()
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-progress",
                                 *_set_args(TINY), "--set", "inner_lr=0.5"])
    _assert_user_error(result, "inner_lr")
    assert (out / CHECKPOINT).read_bytes() == before


def test_train_divergence_is_a_clean_error(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--no-progress", *_set_args(TINY),
                                 "--set", "tasks.families=[sine]", "--set", "inner_lr=100.0"])
    _assert_user_error(result, "NaN", "inner_lr")
    assert not (out / CHECKPOINT).exists()


def test_a_resumed_run_reports_the_iterations_it_trained_now(tmp_path):
    """`trained N meta-iterations in S s` divides this session's iterations by this session's time; it said the
    run's total (600) over a 148-iteration session's seconds."""
    from reptile_fn import config as C
    from reptile_fn import run as R

    out = tmp_path / "run"
    cfg = C.load(None, list(TINY))
    R.train(cfg, out, progress=False, log=lambda _m: None, stop_at=12)
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"trained {cfg.meta_iterations - 12} meta-iterations (now at {cfg.meta_iterations}) in " in result.stdout
