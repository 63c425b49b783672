"""Damaged and mixed-up run folders, checkpoints and command lines (an audit of 2026-12-01): each is one 'error:' line
(or a warning where the command can still do what was asked), never a traceback, a hang, a silently wrong result or
a folder holding two evaluations' files."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reptile_fn import checkpoint as ck
from reptile_fn import io
from reptile_fn.cli import app
from reptile_fn.run import CHECKPOINT, METRICS

from conftest import TINY

runner = CliRunner()
EVAL = ["--episodes", "4", "--speed-steps", "0", "--baselines", "none"]


def _sets(items) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _error(result, *needles: str) -> str:
    """Exit status 2 and one 'error: …' line naming ``needles``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _train(out: Path, *extra: str) -> Path:
    result = runner.invoke(app, ["train", "--out", str(out), "--no-progress", *_sets(TINY), *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("damaged")
    return _train(base / "a"), _train(base / "b", "--set", "seed=1")


def _copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def _rewrite_header(path: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header with ``edit(header)``; the data bytes stay as they are."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


# --- checkpoints --------------------------------------------------------------------------------------

def test_a_checkpoint_whose_tensors_were_changed_or_overlap_is_refused(runs, tmp_path):
    """MLX reads overlapping byte ranges without a word, and a changed weight was blamed on eval.inner_lr: both are
    damage to the file, which the tensors' digest in the metadata (and the layout check) now name."""
    flipped = _copy(runs[0], tmp_path / "flipped")
    raw = bytearray((flipped / CHECKPOINT).read_bytes())
    raw[-8:-4] = struct.pack("<f", 61440.0)  # one stored number changed, the header untouched
    (flipped / CHECKPOINT).write_bytes(bytes(raw))
    _error(runner.invoke(app, ["eval", "--checkpoint", str(flipped), *EVAL]), "altered or damaged", "not the ones")

    overlap = _copy(runs[0], tmp_path / "overlap")
    _rewrite_header(overlap / CHECKPOINT, lambda h: h.__setitem__(
        next(k for k in h if k.startswith("params.")), {**h[next(k for k in h if k.startswith("params."))],
                                                         "data_offsets": [0, 4]}))
    with pytest.raises(Exception) as e:
        ck.load(overlap / CHECKPOINT)
    assert "altered or damaged" in str(e.value) or "could not be read" in str(e.value)
    _, meta = ck.load(runs[0] / CHECKPOINT)  # the good one still loads, its digest consumed
    assert ck.SEAL not in meta and meta["iteration"] == 20


def test_resume_refuses_a_checkpoint_whose_two_iteration_counts_disagree(runs, tmp_path):
    edited = _copy(runs[0], tmp_path / "it")

    def set_iteration(h):
        h["__metadata__"]["iteration"] = "7"
        h["__metadata__"].pop(ck.SEAL)  # as a file written before the digest

    _rewrite_header(edited / CHECKPOINT, set_iteration)
    before = (edited / METRICS).read_text()
    result = runner.invoke(app, ["train", "--out", str(edited), "--resume", "--no-progress"])
    _error(result, "meta-iteration 7 in its metadata but 20 in its state")
    assert (edited / METRICS).read_text() == before


@pytest.mark.parametrize("shapes", ["x", [[28, 28], 5], [[-28, 28, 1], 5], [[10 ** 6, 10 ** 6, 1], 5], [1, 2, 3], [[28, 28, 1], 0]])
def test_damaged_shapes_metadata_is_refused_by_adapt_and_eval_data(tmp_path, shapes):
    """A checkpoint's shapes say what input its model takes; an edited one was a ValueError or OverflowError."""
    run = tmp_path / "omni"
    run.mkdir()
    ship = Path(__file__).resolve().parents[1] / "reptile_fn" / "pretrained" / "omniglot-5w1s.safetensors"
    (run / CHECKPOINT).write_bytes(ship.read_bytes())
    _rewrite_header(run / CHECKPOINT, lambda h: h["__metadata__"].update(shapes=json.dumps(shapes)))
    support = tmp_path / "support"
    for c in "ab":
        (support / c).mkdir(parents=True)
    from reptile_fn.run.stored import stored_shapes
    from reptile_fn import config as C

    arrays, meta = ck.load(run / CHECKPOINT)
    with pytest.raises(Exception, match="shapes metadata"):
        stored_shapes(C.from_dict(meta["config"], stored=True), arrays, meta)
    _error(runner.invoke(app, ["adapt", "--checkpoint", str(run), "--support", str(support), "--query", str(support),
                               "--out", str(tmp_path / "o")]), "shapes metadata")


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path, monkeypatch):
    """MLX reports a failed write as a RuntimeError, which was a traceback; it is now the OSError of that file."""
    import mlx.core as mx

    def full(path, arrays, metadata=None):
        Path(path).write_bytes(b"x")
        raise RuntimeError("[write] Unable to write 3159 bytes to file.")

    monkeypatch.setattr(mx, "save_safetensors", full)
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: type("u", (), {"free": 0})())
    target = tmp_path / "run" / CHECKPOINT
    with pytest.raises(OSError) as e:
        ck.save(target, {"w": mx.zeros((2,))}, metadata={"iteration": 1})
    assert e.value.filename == str(target) and "No space left" in e.value.strerror
    assert not target.exists() and not list(target.parent.iterdir())  # no temporary left behind
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "t"), "--no-progress", *_sets(TINY)])
    _error(result, "No space left on device", str(tmp_path / "t" / CHECKPOINT))


# --- run folders ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ['{"iteration": 21, "eval": 5}', '{"iteration": 21, "eval": {}}',
                                  '{"iteration": 21, "eval": {"metric": "high"}}', '{"iteration": true, "x": 1}'])
def test_eval_draws_the_training_curve_past_odd_metrics_records(runs, tmp_path, line):
    run = _copy(runs[0], tmp_path / "m")
    with open(run / METRICS, "a") as f:
        f.write(line + "\n")
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), *EVAL])
    assert result.exit_code == 0, (result.output, result.exception)
    assert (run / "eval" / "training.png").is_file()


def test_eval_skips_a_metrics_log_that_is_a_pipe_or_a_device(runs, tmp_path):
    run = _copy(runs[0], tmp_path / "fifo")
    (run / METRICS).unlink()
    os.mkfifo(run / METRICS)
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), *EVAL])  # used to block for ever on the pipe
    assert result.exit_code == 0, (result.output, result.exception)
    assert (run / "eval" / "results.json").is_file() and not (run / "eval" / "training.png").exists()


def test_eval_out_inside_another_runs_folder_is_refused(runs):
    """`compare B` reads B/eval/results.json as B's: run A's results written there would be shown under B's name."""
    before = sorted((runs[1]).rglob("*"))
    _error(runner.invoke(app, ["eval", "--checkpoint", str(runs[0]), *EVAL, "--out", str(runs[1] / "eval")]),
           "another run", "compare")
    assert sorted(runs[1].rglob("*")) == before
    link = runs[0].parent / "link-to-b-eval"
    (runs[1] / "eval").mkdir(exist_ok=True)
    link.symlink_to(runs[1] / "eval")
    _error(runner.invoke(app, ["eval", "--checkpoint", str(runs[0]), *EVAL, "--out", str(link)]), "another run")
    _error(runner.invoke(app, ["eval", "--checkpoint", str(runs[0]), *EVAL, "--out", str(runs[0].parent / "x"),
                               "--json", str(runs[1] / "eval" / "results.json")]), "results file of the run")
    ok = runner.invoke(app, ["eval", "--checkpoint", str(runs[0]), *EVAL, "--out", str(runs[0] / "eval")])
    assert ok.exit_code == 0, ok.output


def test_a_stopped_evaluation_leaves_the_last_results_and_figures_together(runs, tmp_path, monkeypatch):
    """results.json was written before the figures: a stop while drawing them left a new results file beside the
    last evaluation's figures. Now both land together, or neither does."""
    from reptile_fn import plots

    run = _copy(runs[0], tmp_path / "s")
    first = runner.invoke(app, ["eval", "--checkpoint", str(run), *EVAL])
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in (run / "eval").iterdir()}

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "training_curve", stopped)
    second = runner.invoke(app, ["eval", "--checkpoint", str(run), "--episodes", "6", "--speed-steps", "0",
                                 "--baselines", "none"])
    assert second.exit_code == 130 and "stopped by Ctrl-C" in second.stderr
    assert {p.name: p.read_bytes() for p in (run / "eval").iterdir()} == before  # no staging folder left either


def test_staged_files_replace_their_namesakes_together_and_stale_ones_go(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "results.json").write_text("old")
    (folder / "training.png").write_text("old figure")
    (folder / "keep.txt").write_text("mine")
    with io.staged(folder, ("training.png", "curves.png")) as stage:
        io.write_text(stage / "results.json", "new")
        io.write_text(stage / "curves.png", "new figure")
    assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "keep.txt", "results.json"]
    assert (folder / "results.json").read_text() == "new"
    with pytest.raises(RuntimeError), io.staged(folder) as stage:
        io.write_text(stage / "results.json", "newer")
        raise RuntimeError("stopped")
    assert (folder / "results.json").read_text() == "new" and len(list(folder.iterdir())) == 3
    killed = folder / ".staged.abc123"  # what a SIGKILL left a day ago; a recent one may be a live writer's
    recent = folder / ".staged.def456"
    killed.mkdir(), recent.mkdir()
    os.utime(killed, (time.time() - 86400, time.time() - 86400))
    with io.staged(folder):
        pass
    assert not killed.exists() and recent.exists()


def test_eval_warns_of_an_edited_config_yaml_and_of_training_only_settings(runs, tmp_path):
    run = _copy(runs[0], tmp_path / "c")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("k_shot: 5", "k_shot: 1"))
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), *EVAL])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "tasks.k_shot" in result.stderr and "--set" in result.stderr
    idle = runner.invoke(app, ["eval", "--checkpoint", str(runs[0]), *EVAL, "--set", "tasks.num_train_tasks=3",
                               "--set", "outer_lr=3", "--out", str(tmp_path / "idle")])
    assert idle.exit_code == 0, idle.output
    warned = [line for line in idle.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "outer_lr, tasks.num_train_tasks" in warned[0] and "only meta-training" in warned[0]
    recorded = json.loads((tmp_path / "idle" / "results.json").read_text())["config"]
    assert recorded["outer_lr"] != 3 and recorded["tasks"]["num_train_tasks"] == 100  # the run's own values


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing here\n"])
def test_resume_with_an_empty_config_yaml_says_it_is_empty(runs, tmp_path, text):
    run = _copy(runs[0], tmp_path / "e")
    (run / "config.yaml").write_text(text)
    _error(runner.invoke(app, ["train", "--out", str(run), "--resume", "--no-progress"]), "is empty", "writes it back")


def test_a_metrics_log_far_larger_than_any_run_writes_is_not_read_whole(runs, tmp_path):
    run = _copy(runs[0], tmp_path / "big")
    with open(run / METRICS, "r+b") as f:
        f.truncate(io.LOG_LIMIT + 1)  # sparse: no disk used
    _error(runner.invoke(app, ["train", "--out", str(run), "--resume", "--no-progress"]), "GB", "move it away")
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), *EVAL])
    assert result.exit_code == 0 and "warning: no training.png" in result.stderr, result.output
    assert (run / "eval" / "results.json").exists() and not (run / "eval" / "training.png").exists()


def test_eval_keeps_figures_it_did_not_draw_in_a_new_folder_and_refuses_a_folder_where_one_goes(runs, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sine.png").write_text("a user's own file")
    ok = runner.invoke(app, ["eval", "--checkpoint", str(runs[0]), *EVAL, "--out", str(mine)])
    assert ok.exit_code == 0, ok.output
    assert (mine / "sine.png").read_text() == "a user's own file"
    odd = tmp_path / "odd"
    (odd / "sine.png").mkdir(parents=True)
    _error(runner.invoke(app, ["eval", "--checkpoint", str(runs[0]), *EVAL, "--out", str(odd)]), "sine.png", "a folder")
    assert sorted(p.name for p in odd.iterdir()) == ["sine.png"]


def test_a_full_disk_while_staging_names_the_file_in_the_folder(tmp_path):
    folder = tmp_path / "out"
    with pytest.raises(OSError) as e, io.staged(folder) as stage:
        raise OSError(28, "No space left on device", str(stage / ".curves.png.abcd1234.tmp"))
    assert e.value.filename == str(folder / "curves.png") and not list(folder.iterdir())


def test_compare_names_embed_folders_and_finished_runs_without_a_summary(runs, tmp_path):
    import shutil

    run = _copy(runs[0], tmp_path / "done")
    (run / "summary.json").unlink()
    shutil.rmtree(run / "eval", ignore_errors=True)  # what compare would read instead
    _error(runner.invoke(app, ["compare", str(run)]), "--resume")
    emb = tmp_path / "emb"
    emb.mkdir()
    (emb / "embed.json").write_text("{}")
    _error(runner.invoke(app, ["compare", str(emb)]), "reptile-fn embed")


def test_a_checkpoint_file_that_is_a_folder_and_an_empty_checkpoint_are_named(tmp_path):
    (tmp_path / "r" / CHECKPOINT).mkdir(parents=True)
    _error(runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "r"), *EVAL]), f"{CHECKPOINT} is a folder")
    _error(runner.invoke(app, ["info", "--checkpoint", ""]), "empty")


# --- config values and command lines ---------------------------------------------------------------------

def test_data_dir_and_a_set_of_tasks_data_dir_disagreeing_is_refused(tmp_path):
    """The option was applied after the --set, which it then overrode without a word."""
    _error(runner.invoke(app, ["validate", "--config", "omniglot_5w1s", "--data-dir", str(tmp_path), "--set",
                               f"tasks.data_dir={tmp_path / 'x'}"]), "--data-dir", "tasks.data_dir")
    _error(runner.invoke(app, ["validate", "--encoder", str(tmp_path), "--set", "encoder=x"]), "--encoder")


@pytest.mark.parametrize("value", ["５", "٥", "²"])
def test_unicode_digits_are_not_numbers(value):
    for key in ("meta_iterations", "inner_lr"):
        line = _error(runner.invoke(app, ["validate", "--set", f"{key}={value}"]), key, "ASCII digits")
        assert "too large" not in line


def test_an_empty_string_setting_is_refused():
    _error(runner.invoke(app, ["validate", "--set", 'init=""']), "init is empty")


def test_a_yaml_alias_bomb_is_reported_at_once(tmp_path):
    """Nine lines of aliases make a list of 10^9 strings; the error message used to repr all of it first."""
    lines = ["trainable:", '  - &a ["x","x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  - &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    _error(runner.invoke(app, ["validate", "--config", str(bomb)]), "flat list")
    assert time.perf_counter() - start < 30


def test_a_checkpoint_given_as_a_config_is_named(runs):
    _error(runner.invoke(app, ["validate", "--config", str(runs[0] / CHECKPOINT)]), "is a checkpoint", "config.yaml")


def test_divergence_names_an_outer_lr_final_above_outer_lr(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "d"), "--no-progress", *_sets(TINY),
                                 "--set", "outer_lr_final=1e38"])
    _error(result, "outer_lr_final")


@pytest.mark.parametrize("stop, status, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C (SIGINT)")])
def test_a_stop_while_the_command_line_loads_blas_is_one_line(stop, status, name):
    """`python -m reptile_fn` and the console script: the package loads BLAS (~0.1 s) before the command line's own
    guard runs; a stop then was a traceback (Ctrl-C) or a silent kill (SIGTERM). Here the stop arrives exactly then."""
    blas = Path(__file__).resolve().parents[1] / "reptile_fn" / "_blas.py"
    code = ("import importlib.util, signal, sys\n"
            "sys.argv = ['-m']\n"  # what `python -m reptile_fn` shows while it imports the package
            "sys.orig_argv = [sys.executable, '-m', 'reptile_fn', 'info']\n"
            f"spec = importlib.util.spec_from_file_location('reptile_fn._blas', {str(blas)!r})\n"
            "blas = importlib.util.module_from_spec(spec)\n"
            "sys.modules['reptile_fn._blas'] = blas\n"
            "spec.loader.exec_module(blas)\n"
            f"blas.load = lambda: signal.raise_signal(signal.Signals({int(stop)}))\n"
            "import reptile_fn\n")
    env = {**os.environ, "PYTHONPATH": str(blas.parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == status, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"error: stopped by {name} while starting; nothing was done", proc.stderr[-2000:]
    for other in ("sys.argv = ['-c']", "sys.orig_argv = [sys.executable, '-m', 'mypkg']"):  # a library import, or
        plain = subprocess.run([sys.executable, "-c", code.replace(  # python -m of another package: left alone
            "sys.argv = ['-m']" if "argv = ['-c']" in other else "sys.orig_argv = [sys.executable, '-m', 'reptile_fn', 'info']",
            other)], env=env, capture_output=True, text=True, timeout=120)
        assert plain.returncode != 0 and "error: stopped" not in plain.stderr, (other, plain.stderr[-500:])


def test_a_sigterm_while_typer_parses_is_named_and_keeps_its_status(monkeypatch, capsys):
    """typer turns any KeyboardInterrupt during parsing into a silent status 130: a SIGTERM then was reported as a
    Ctrl-C with status 130, not as itself with 143."""
    import typer

    from reptile_fn import cli, signals

    def stopped(*a, **k):
        signals.LAST_STOP[:] = [signals.Terminated(signal.SIGTERM)]
        raise signals.LAST_STOP[0]

    monkeypatch.setattr(sys, "argv", ["reptile-fn", "info"])
    monkeypatch.setattr(typer.core.TyperGroup, "make_context", stopped)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 143
    assert capsys.readouterr().err.strip() == "error: stopped by SIGTERM before the command began; nothing was done"


def test_a_stop_while_typer_builds_the_command_or_while_a_module_first_loads_is_one_line(monkeypatch, capsys):
    """A stop while typer builds the command (before it parses) was a traceback; one inside a compiled module's first
    import (matplotlib's) surfaces as ImportError("initialization failed") and was a traceback too."""
    import typer

    from reptile_fn import cli, cli_options

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["reptile-fn", "info"])
    monkeypatch.setattr(typer.main, "get_command", stopped)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130 and capsys.readouterr().err.startswith("error: stopped by Ctrl-C (SIGINT) before")

    @cli_options.errors_to_exit
    def drawing():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("initialization failed")

    with pytest.raises(SystemExit) as e:
        drawing()
    assert e.value.code == 130 and "stopped by Ctrl-C" in capsys.readouterr().err


def test_a_full_disk_at_the_summary_says_the_training_is_kept(tmp_path, monkeypatch):
    from reptile_fn.run import loop

    real = loop.io.write_text

    def full(path, text):
        if Path(path).name == "summary.json":
            raise OSError(28, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(loop.io, "write_text", full)
    out = tmp_path / "s"
    result = runner.invoke(app, ["train", "--out", str(out), "--no-progress", *_sets(TINY)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in ("No space left", "checkpoint is saved", "--resume", str(out / "summary.json")):
        assert needle in errors[0], (needle, errors[0])
    assert (out / CHECKPOINT).is_file()
    monkeypatch.setattr(loop.io, "write_text", real)
    again = runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert again.exit_code == 0 and (out / "summary.json").is_file(), again.output
