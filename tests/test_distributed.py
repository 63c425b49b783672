"""Multi-process meta-training: the block split, and real 2-process runs on the loopback ring backend.

The 2-process tests launch `reptile-fn train` twice (through `mlx.launch`, or by hand with the
variables it sets) and compare with a single-process run of the same config in this process.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlx.utils import tree_flatten

from reptile_fn import run as R
from reptile_fn import checkpoint as ck
from reptile_fn import config as C
from reptile_fn import distributed as D
from reptile_fn.errors import ConfigError

from conftest import TINY, quiet

BIN = Path(sys.executable).parent
CLI = str(BIN / "reptile-fn") if (BIN / "reptile-fn").exists() else shutil.which("reptile-fn")
LAUNCH = str(BIN / "mlx.launch") if (BIN / "mlx.launch").exists() else shutil.which("mlx.launch")
SMALL = TINY + ("meta_iterations=12", "meta_batch_size=4", "eval.episodes=4", "eval.every=1000",
                "checkpoint_every=6", "log_every=3")


class FakeGroup:
    """Just enough of mx.distributed.Group for the pure helpers: a rank and a size."""

    def __init__(self, rank, size):
        self._rank, self._size = rank, size

    def rank(self):
        return self._rank

    def size(self):
        return self._size


# --- the block split -----------------------------------------------------------------------------

@given(st.integers(1, 8), st.integers(1, 6))
def test_blocks_of_all_ranks_partition_the_meta_batch(size, per_process):
    n = size * per_process
    blocks = [D.shard(n, D.World(FakeGroup(r, size), r, size)) for r in range(size)]
    assert [i for b in blocks for i in range(n)[b]] == list(range(n))


@given(st.integers(2, 8), st.integers(1, 40))
def test_uneven_meta_batch_is_refused_with_the_fix(size, n):
    if n % size == 0:
        n += 1
    with pytest.raises(ConfigError, match=rf"meta_batch_size = {n} .* multiple of {size}"):
        D.shard(n, D.World(FakeGroup(0, size), 0, size))


@pytest.mark.parametrize("size", [1, 2, 4])
def test_task_keys_of_all_ranks_are_the_single_process_keys(size):
    key, n = mx.random.key(3), 8
    blocks = [D.task_keys(key, n // size, FakeGroup(r, size) if size > 1 else None) for r in range(size)]
    np.testing.assert_array_equal(np.concatenate([np.array(b) for b in blocks]), np.array(mx.random.split(key, n)))


def test_single_process_without_a_launcher(monkeypatch):
    for var in D.LAUNCH_ENV:
        monkeypatch.delenv(var, raising=False)
    w = D.world()
    assert (w.group, w.rank, w.size, w.is_main) == (None, 0, 1, True)
    tree = {"a": mx.array([1.0, 2.0])}
    assert D.mean(tree, None) is tree
    D.check_same(w, "anything")  # one process always agrees with itself


@pytest.mark.parametrize("raw", ["0", "-3", "soon"])
def test_bad_peer_timeout_is_refused_with_the_fix(monkeypatch, raw):
    monkeypatch.setenv(D.PEER_TIMEOUT_ENV, raw)
    with pytest.raises(ConfigError, match=D.PEER_TIMEOUT_ENV):
        D.peer_timeout()


def test_peer_timeout_default_and_override(monkeypatch):
    monkeypatch.delenv(D.PEER_TIMEOUT_ENV, raising=False)
    assert D.peer_timeout() == D.DEFAULT_PEER_TIMEOUT
    monkeypatch.setenv(D.PEER_TIMEOUT_ENV, "42.5")
    assert D.peer_timeout() == 42.5


def test_lost_peer_recognises_backend_errors_only():
    assert D.lost_peer(RuntimeError("[ring] connection to a peer was lost"))
    assert not D.lost_peer(RuntimeError("unrelated"))
    assert not D.lost_peer(ValueError("[ring] not a runtime error"))


# --- two real processes --------------------------------------------------------------------------

def _free_port_pair() -> int:
    """A port p with p and p + 1 free on 127.0.0.1 (the ring backend listens on one per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p >= 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    pytest.skip("no two consecutive free TCP ports on 127.0.0.1")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in D.LAUNCH_ENV + ("MLX_HOSTFILE",)}
    env["OPENBLAS_NUM_THREADS"] = "1"  # two processes on a small machine: do not oversubscribe
    return env


def _overrides(extra):
    return [a for kv in SMALL + tuple(extra) for a in ("--set", kv)]


def _params(path):
    arrays, meta = ck.load(path)
    return {k: np.array(v.astype(mx.float32)) for k, v in arrays.items()}, meta


needs_launcher = pytest.mark.skipif(CLI is None or LAUNCH is None, reason="reptile-fn / mlx.launch not on PATH")


@needs_launcher
@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_two_processes_give_the_single_process_parameters(tmp_path, algorithm):
    extra = (f"algorithm={algorithm}",)
    single = tmp_path / "single"
    R.train(C.load(None, SMALL + extra), single, progress=False, log=quiet)

    two = tmp_path / "two"
    cmd = [LAUNCH, "-n", "2", "--starting-port", str(_free_port_pair()), "--",
           CLI, "train", "--no-progress", "--out", str(two), *_overrides(extra)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 processes, 2 of each meta-batch's 4 tasks per process" in r.stdout
    assert r.stdout.count("trained 12 meta-iterations") == 1  # rank 0 reports, rank 1 is silent

    a, meta_a = _params(single / R.CHECKPOINT)
    b, meta_b = _params(two / R.CHECKPOINT)
    assert a.keys() == b.keys() and meta_a["iteration"] == meta_b["iteration"] == 12
    for k in a:  # parameters and algorithm state (FOMAML: the outer Adam moments too)
        np.testing.assert_allclose(b[k], a[k], atol=1e-5, rtol=0, err_msg=k)
    cfg = C.load(None, SMALL + extra)
    init = dict(tree_flatten(R.build(cfg).initial_params(R.run_keys(cfg.seed).init)))
    assert max(float(np.abs(b[f"params.{k}"] - np.array(v)).max()) for k, v in init.items()) > 1e-3  # it trained
    # one metrics log (rank 0's), with the meta-batch means the single process logged
    la = [json.loads(x) for x in (single / R.METRICS).read_text().splitlines()]
    lb = [json.loads(x) for x in (two / R.METRICS).read_text().splitlines()]
    assert [x["iteration"] for x in la] == [x["iteration"] for x in lb]
    for x, y in zip(la, lb):
        for k in x:
            if k != "iteration":
                assert y[k] == pytest.approx(x[k], abs=1e-5), k
    assert json.loads((two / R.SUMMARY).read_text())["processes"] == 2


@needs_launcher
@pytest.mark.parametrize("victim", [1, 0])
def test_killing_one_process_ends_the_other_with_a_clear_error(tmp_path, victim):
    out = tmp_path / "run"
    hostfile = tmp_path / "hosts.json"
    p = _free_port_pair()
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"], [f"127.0.0.1:{p + 1}"]]))
    cmd = [CLI, "train", "--no-progress", "--out", str(out),
           *_overrides(("meta_iterations=1000000", "checkpoint_every=5", "log_every=5"))]
    env = {**_env(), "MLX_HOSTFILE": str(hostfile), D.PEER_TIMEOUT_ENV: "10"}
    procs = [subprocess.Popen(cmd, env={**env, "MLX_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not (out / R.CHECKPOINT).exists():
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            assert all(q.poll() is None for q in procs), [q.communicate() for q in procs]
            time.sleep(0.2)
        time.sleep(0.5)
        procs[victim].send_signal(signal.SIGKILL)
        survivor = procs[1 - victim]
        t0 = time.monotonic()
        _, err = survivor.communicate(timeout=60)  # bounded: raises TimeoutExpired if it hangs
        assert time.monotonic() - t0 < 30  # the 10 s peer timeout, or MLX's own error, well before
    finally:
        for q in procs:
            if q.poll() is None:
                q.kill()
            q.communicate()
    assert survivor.returncode == 2, err
    assert f"process {1 - victim} of 2 lost contact" in err and "--resume" in err, err
    assert "Traceback" not in err

    # the last checkpoint is whole, and a single process resumes from it
    _, meta = ck.load(out / R.CHECKPOINT)
    it = int(meta["iteration"])
    assert it >= 5 and it % 5 == 0
    summary = R.train(None, out, resume=True, stop_at=it + 2, progress=False, log=quiet)
    assert summary["iteration"] == it + 2


@needs_launcher
def test_processes_with_different_configs_are_refused(tmp_path):
    p = _free_port_pair()
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"], [f"127.0.0.1:{p + 1}"]]))
    env = {**_env(), "MLX_HOSTFILE": str(hostfile), D.PEER_TIMEOUT_ENV: "30"}
    procs = [subprocess.Popen([CLI, "train", "--no-progress", "--out", str(tmp_path / "run"),
                               *_overrides((f"inner_lr={lr}",))], env={**env, "MLX_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, lr in ((0, 0.02), (1, 0.03))]
    errs = [q.communicate(timeout=120)[1] for q in procs]
    assert [q.returncode for q in procs] == [2, 2], errs
    assert all("different config" in e for e in errs), errs
    assert not (tmp_path / "run" / R.CHECKPOINT).exists()


def test_readme_hostfile_example_is_what_mlx_launch_reads(tmp_path):
    from mlx._distributed_utils.common import Hostfile

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Multi-process training", 1)[1].split("\n## ", 1)[0]
    example = section.split("```json\n", 1)[1].split("```", 1)[0]
    (tmp_path / "hosts.json").write_text(example)
    hosts = Hostfile.from_file(tmp_path / "hosts.json").hosts
    assert [(h.ssh_hostname, h.ips) for h in hosts] == [("node-a", ["10.0.0.1"]), ("node-b", ["10.0.0.2"])]
    assert "mlx.launch -n 2 -- reptile-fn train" in section
