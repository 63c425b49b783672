"""Faults and damaged files: SIGTERM saves like Ctrl-C, a partial metrics line or a killed writer's temporary file
does not break a resume, damaged or NaN checkpoints are refused with one clear error, adapter pairs are replaced
as a pair, and long evaluations sample held-out episodes in bounded chunks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from reptile_fn import checkpoint as ck
from reptile_fn import config as C
from reptile_fn import run as R
from reptile_fn.errors import CheckpointError
from reptile_fn.run import report

from conftest import TINY, quiet

ROOT = Path(__file__).resolve().parents[1]


def _train(cfg, out, **kw):
    return R.train(cfg, out, progress=False, log=quiet, **kw)


@pytest.mark.parametrize("stop, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_save_a_checkpoint_like_ctrl_c(tmp_path, stop, status):
    """What a scheduler or `kill` sends, or a terminal closed under a run started without nohup (SIGHUP killed it
    with no checkpoint and no word): the run saves where it is, like Ctrl-C, to continue with --resume."""
    out = tmp_path / "run"
    sets = [a for s in ("meta_iterations=100000", "checkpoint_every=100000", "log_every=10", "eval.every=100000",
                        "eval.episodes=10") for a in ("--set", s)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from reptile_fn.cli import main; main()", "train", *sets, "--out", str(out),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # not nohup's
    metrics = out / R.METRICS
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(stop)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == status and "terminated: checkpoint saved at meta-iteration" in output, output
    assert f"error: stopped by {signal.Signals(stop).name} before" in output
    assert "Traceback" not in output
    _, meta = ck.load(out / R.CHECKPOINT)
    assert meta["iteration"] >= 20
    assert not list(out.glob(".*tmp*"))


def test_a_partial_last_metrics_line_and_a_stale_temporary_do_not_break_resume(tmp_path):
    cfg = C.load(None, TINY)
    full, part = tmp_path / "full", tmp_path / "part"
    _train(cfg, full)
    _train(cfg, part, stop_at=10)
    with open(part / R.METRICS, "a") as f:
        f.write('{"iteration": 15, "support_lo')  # what a crash or a full disk leaves
    stale = part / ".checkpoint.safetensors.abc123.tmp.safetensors"
    stale.write_bytes(b"half a checkpoint")
    _train(None, part, resume=True)
    assert (part / R.METRICS).read_text() == (full / R.METRICS).read_text()
    assert not stale.exists()


def test_damaged_checkpoint_metadata_and_nan_parameters_are_refused(tmp_path):
    cfg = C.load(None, TINY)
    out = tmp_path / "run"
    _train(cfg, out, stop_at=10)
    arrays, meta = ck.load(out / R.CHECKPOINT)
    params = {k[len("params."):]: v for k, v in arrays.items() if k.startswith("params.")}
    state = {k[len("state."):]: v for k, v in arrays.items() if k.startswith("state.")}
    from mlx.utils import tree_unflatten

    for bad, match in (("abc", "records meta-iteration 'abc'"), (10**9, "records meta-iteration 1000000000")):
        ck.save(out / R.CHECKPOINT, tree_unflatten(list(params.items())), tree_unflatten(list(state.items())),
                {**meta, "iteration": bad})
        with pytest.raises(CheckpointError, match=match):
            _train(None, out, resume=True)
        with pytest.raises(CheckpointError, match=match):
            R.load(out / R.CHECKPOINT)  # what eval, adapt and embed read
    nan = {k: mx.full(v.shape, float("nan")) for k, v in params.items()}
    ck.save(out / R.CHECKPOINT, tree_unflatten(list(nan.items())), tree_unflatten(list(state.items())), meta)
    with pytest.raises(CheckpointError, match="NaN/Inf parameters"):
        _train(None, out, resume=True)
    with pytest.raises(CheckpointError, match="NaN/Inf parameters"):
        R.load(out / R.CHECKPOINT)


def test_adapter_files_are_replaced_as_a_pair_and_a_half_done_swap_is_recovered(tmp_path):
    from reptile_fn import peft
    from reptile_fn.models import mlp

    pf = peft.peft_model(mlp(2, 2, hidden=4, depth=1), method="lora", targets=("layer*.w",), rank=2)
    params = pf.model.init(mx.random.key(0))
    learned = ["adapter.layer0.w.lora_a", "adapter.layer0.w.lora_b"]
    folder = tmp_path / "adapter"
    peft.save_adapters(folder, params, learned, {"rank": 2})
    first = (folder / "adapters.safetensors").read_bytes()
    params["adapter"]["layer0"]["w"]["lora_b"] = params["adapter"]["layer0"]["w"]["lora_b"] + 1
    peft.save_adapters(folder, params, learned, {"rank": 3})
    assert (folder / "adapters.safetensors").read_bytes() != first
    assert json.loads((folder / "adapter_config.json").read_text())["rank"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary or old folder left
    # a save killed between its two renames leaves the old pair under a hidden name: it is put back
    os.rename(folder, tmp_path / ".adapter.xyz.old")
    restored, cfg = peft.load_adapters(folder, params["base"])
    assert cfg["rank"] == 3 and folder.is_dir()


def test_a_long_evaluation_samples_bounded_chunks_and_a_short_one_is_unchanged(tmp_path, monkeypatch):
    cfg = C.load(None, TINY)
    run = R.build(cfg)
    params = run.model.init(R.run_keys(0).init)
    key = mx.random.key(3)
    whole = R.evaluate_init(run, params, key, 12, 2)
    from reptile_fn.evaluate import few_shot_curve

    sample_key, adapt_key = mx.random.split(key)
    direct = few_shot_curve(R.evaluation_loop(run, steps=2), run.model.apply, run.loss, params,
                            run.tasks.sample_test(sample_key, 12), metric=run.metric, key=adapt_key)
    assert whole == direct  # one chunk: exactly the episodes and keys of sampling them all at once
    import dataclasses

    sizes = []
    monkeypatch.setattr(report, "SAMPLE_BYTES", 5 * report._episode_bytes(run))
    chunked = R.evaluate_init(dataclasses.replace(run, tasks=_Spy(run.tasks, sizes)), params, key, 12, 2)
    assert sizes[1:] == [5, 5, 2] and chunked["episodes"] == 12  # (the first draws one episode to measure it)
    assert np.isfinite(chunked["metric"]["mean"]).all()


class _Spy:
    """A sampler that records how many held-out episodes each call draws."""

    def __init__(self, tasks, sizes):
        self.tasks, self.sizes = tasks, sizes

    def __getattr__(self, name):
        return getattr(self.tasks, name)

    def sample_test(self, key, n):
        self.sizes.append(n)
        return self.tasks.sample_test(key, n)


def test_a_peft_base_that_does_not_exist_is_an_error_before_anything_runs():
    from reptile_fn.errors import ConfigError

    with pytest.raises(ConfigError, match="peft.base = /nonexistent.safetensors does not exist"):
        R.build(C.load(None, ["peft.method=lora", "peft.base=/nonexistent.safetensors"]))


def test_an_omniglot_png_claiming_billions_of_pixels_is_refused_without_decoding(tmp_path, monkeypatch):
    """A zip whose PNG header says 20000×20000: one DataError naming the zip and how to replace it (Pillow's
    DecompressionBombError used to escape as a traceback)."""
    import struct
    import zipfile
    import zlib

    from reptile_fn.errors import DataError
    from reptile_fn.tasks import omniglot as O

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    monkeypatch.setenv("REPTILE_FN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    root.mkdir()
    with zipfile.ZipFile(root / "images_background.zip", "w") as z:
        for a in range(3):
            for c in range(2):
                for d in range(1, 21):
                    z.writestr(f"images_background/Alpha{a}/character{c + 1:02d}/{c:04d}_{d:02d}.png", bomb)
    with pytest.raises(DataError, match=r"corrupt or truncated .*--force"):
        O.load_set("background", root)


def test_resume_refuses_an_edited_config_yaml_and_a_damaged_log_and_keeps_a_finished_runs_speed(tmp_path):
    cfg = C.load(None, TINY)
    out = tmp_path / "run"
    _train(cfg, out)
    first = json.loads((out / R.SUMMARY).read_text())
    _train(None, out, resume=True)  # already finished: re-evaluates, keeps how fast it trained
    again = json.loads((out / R.SUMMARY).read_text())
    assert again["seconds"] == first["seconds"] and again["meta_steps_per_s"] == first["meta_steps_per_s"]
    config = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(config.replace(f"inner_lr: {cfg.inner_lr}", "inner_lr: 0.5"))
    with pytest.raises(C.ConfigError, match="config.yaml was edited \\(inner_lr\\)"):
        _train(None, out, resume=True)
    (out / "config.yaml").write_text(config)
    log = (out / R.METRICS).read_text()
    (out / R.METRICS).write_text("\x8f garbage\n" + log)
    with pytest.raises(CheckpointError, match="line 1 is not a metrics record"):
        _train(None, out, resume=True)
    assert (out / R.METRICS).read_text() == "\x8f garbage\n" + log  # kept, not wiped
    (out / R.METRICS).write_text('{"iteration": "abc"}\n' + log)  # JSON, but not a record: damaged too
    with pytest.raises(CheckpointError, match="line 1 is not a metrics record"):
        _train(None, out, resume=True)
    (out / R.METRICS).write_text(log)
    for damage in ("algorithm: [unclosed\n", "\xff\xfe", "algorithm: reptile\nalgorithm: maml\n"):  # an unreadable edit
        (out / "config.yaml").write_bytes(damage.encode("latin-1"))
        with pytest.raises(C.ConfigError, match="was edited and cannot be read back"):
            _train(None, out, resume=True)
        assert (out / "config.yaml").read_bytes() == damage.encode("latin-1")  # kept for whoever wrote it
    (out / "config.yaml").unlink()  # a deleted config.yaml is written back
    _train(None, out, resume=True)
    assert (out / "config.yaml").read_text() == config


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_behind(tmp_path):
    """A fresh `train` that fails after its start (bad data met in the first step, Ctrl-C) wrote config.yaml and an
    empty metrics.jsonl; they go, and so does the folder it made. One that logged a record keeps its files."""

    class Fail:
        def __init__(self, at):
            self.at = at

        def on_step(self, it):
            if it == self.at:
                raise ValueError("the data ran out")

        def on_log(self, it, record):
            pass

        def close(self):
            pass

    cfg = C.load(None, [*TINY, "log_every=2", "checkpoint_every=100"])
    with pytest.raises(ValueError, match="ran out"):
        _train(cfg, tmp_path / "made", callbacks=(Fail(1),))
    assert not (tmp_path / "made").exists()
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="ran out"):
        _train(cfg, tmp_path / "there", callbacks=(Fail(1),))
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="ran out"):
        _train(cfg, tmp_path / "logged", callbacks=(Fail(3),))  # the record of iteration 2 is in the log
    assert {p.name for p in (tmp_path / "logged").iterdir()} == {"config.yaml", R.METRICS}


def test_a_folder_with_a_runs_log_but_no_checkpoint_is_not_overwritten(tmp_path):
    """A log without its checkpoint (deleted, or a kill -9 before the first one): `--resume` has nothing to
    continue, and a fresh start would wipe the log, so it is refused too; the log stays as it was."""
    out = tmp_path / "run"
    _train(C.load(None, TINY), out)
    (out / R.CHECKPOINT).unlink()
    log = (out / R.METRICS).read_text()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        _train(None, out, resume=True)
    with pytest.raises(C.ConfigError, match="holds the log of a run"):
        _train(C.load(None, TINY), out)
    assert (out / R.METRICS).read_text() == log
    (out / R.METRICS).write_text("")  # an empty log holds nothing to lose
    _train(C.load(None, TINY), out)


def test_a_run_being_trained_cannot_be_trained_by_a_second_process(tmp_path):
    """Two `train --resume` of one run at once would both write its files; the second is refused."""
    from reptile_fn.errors import ConfigError
    from reptile_fn.run.files import exclusive

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from reptile_fn.run.files import exclusive\n"
                               "with exclusive(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="being trained by another process"):
            _train(C.load(None, TINY), out)
    finally:
        holder.kill()
        holder.wait()
    with exclusive(out):  # free again once the holder is gone
        pass
    _train(C.load(None, TINY), tmp_path / "fresh", stop_at=2)
    with pytest.raises(ConfigError, match="already holds a run"):  # and the lock is released after a failed start
        _train(C.load(None, TINY), tmp_path / "fresh")
    assert not (tmp_path / "never").exists()
    with pytest.raises(Exception):
        _train(C.load(None, [*TINY, "tasks.dataset=omniglot", "tasks.data_dir=/nonexistent"]), tmp_path / "never")
    assert not (tmp_path / "never").exists()  # a run that failed to start leaves no empty folder


@pytest.mark.parametrize("temporary, shown", [("/r/.metrics.jsonl.5i_p2thf.tmp", "/r/metrics.jsonl"),
                                              ("/r/.checkpoint.safetensors.ab12cd34.tmp.safetensors",
                                               "/r/checkpoint.safetensors"), ("/r/summary.json", "/r/summary.json")])
def test_an_error_about_a_temporary_names_the_file_being_written(temporary, shown, tmp_path):
    from reptile_fn import io

    assert io.written_name(temporary) == shown
    with io.atomic_path(tmp_path / "x.json") as tmp:  # the names atomic_path really makes
        assert io.written_name(tmp) == str(tmp_path / "x.json")


def test_a_second_stop_during_the_save_is_ignored_until_it_is_done():
    """``signals.shielded``: SIGINT and SIGTERM inside the block do nothing; the handlers are back after it."""
    from reptile_fn.signals import shielded

    before = signal.getsignal(signal.SIGINT)
    with shielded():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # delivered (and ignored) here
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)


@pytest.fixture
def unreadable(monkeypatch):
    """``unreadable(path)``: opening that file raises PermissionError, as for a file this user may not read (the
    tests may run as root, who may read anything, so open() itself is made to refuse)."""
    import builtins
    import errno
    import io

    refused, real = set(), builtins.open

    def refusing_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    monkeypatch.setattr(io, "open", refusing_open)  # zipfile and pathlib open through io.open
    return lambda path: refused.add(os.path.realpath(path)) or path


def test_a_file_that_may_not_be_read_is_reported_as_such_not_as_corrupt(tmp_path, unreadable):
    """Each reader whose own handler would call the file corrupt (and advise downloading it again) lets the
    PermissionError through, and the CLI's line names the permission and the file."""
    import zipfile

    from typer.testing import CliRunner

    from reptile_fn.cli import app
    from reptile_fn.tasks import image_files, omniglot_zip, text

    ckpt = ck.save(tmp_path / "c.safetensors", {"w": mx.zeros((2,))})
    archive = tmp_path / "images_background.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("images_background/A/character01/0101_01.png", b"")
    (tmp_path / "clinc150").mkdir()
    (tmp_path / "clinc150" / "data_full.json").write_text("{}")
    for path in (ckpt, archive, tmp_path / "clinc150" / "data_full.json"):
        unreadable(path)
    for read in (lambda: ck.load(ckpt), lambda: omniglot_zip.index_zip(archive, "images_background"),
                 lambda: omniglot_zip.decode_zip(archive, "images_background", "nearest"),
                 lambda: image_files.open_source(archive).__enter__(),
                 lambda: image_files.read_image(open, str(ckpt), "c", 28),
                 lambda: text.load_clinc150(tmp_path)):
        with pytest.raises(PermissionError):
            read()
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(ckpt)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr.strip() == (f"error: permission denied: {ckpt}; give this user access to it (chmod, chown) "
                                     "or use another path")


def test_a_run_under_nohup_keeps_ignoring_sighup():
    """nohup sets SIGHUP to be ignored: the stop handler must not take it over, or closing the terminal would stop
    the run nohup was asked to keep going."""
    from reptile_fn.signals import sigterm_as_interrupt

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)
