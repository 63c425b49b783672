"""Data-parallel meta-training over MLX's own distributed layer (``mx.distributed``).

A meta-batch of B tasks is split over P processes (B divisible by P): process r adapts tasks
r·B/P … (r+1)·B/P − 1, and the per-process means of the task directions (Reptile) or
meta-gradients (MAML family) are averaged with ``mx.distributed.all_sum``, so every process ends
each meta-step with the same parameters. Task i of a meta-iteration is defined by the iteration's
key alone (its inner-loop key is ``split(key, B)[i]``, its episode the i-th of the sampler's B), so a
run of P processes computes the same meta-batch, and the same parameters up to float rounding, as
one process; the test suite checks this for P = 2.

Launch with ``mlx.launch`` (ring backend over TCP, or MPI where installed)::

    mlx.launch -n 2 -- reptile-fn train --config configs/sine.yaml

Without a launcher, ``world()`` is a single process and nothing here communicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import time
from typing import Callable, NamedTuple

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from reptile_fn.errors import ConfigError, ReptileFnError
from reptile_fn.tree import Tree

PEER_TIMEOUT_ENV = "REPTILE_FN_PEER_TIMEOUT"  # seconds a collective may wait for the other processes
DEFAULT_PEER_TIMEOUT = 600.0
# Variables a launcher sets in each process (mlx.launch: MLX_RANK; mpirun: OMPI_COMM_WORLD_RANK / PMI_RANK)
LAUNCH_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


class DistributedError(ReptileFnError):
    """A process lost its peers, or the processes of one run disagree."""


class World(NamedTuple):
    """This process's place in a run: ``group`` is None for a single process."""

    group: object  # mx.distributed.Group or None
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and progress output."""
        return self.rank == 0


SINGLE = World(None, 0, 1)


def world() -> World:
    """The distributed group this process was launched into, or ``SINGLE`` without a launcher."""
    if not any(v in os.environ for v in LAUNCH_ENV):
        return SINGLE
    try:
        group = mx.distributed.init()
    except RuntimeError as e:
        raise DistributedError(f"could not join the distributed group: {e}. Launch with `mlx.launch -n P -- "
                               "reptile-fn train ...` (see README, Multi-process training)") from e
    return SINGLE if group.size() == 1 else World(group, group.rank(), group.size())


def shard(n_global: int, w: World) -> slice:
    """This process's tasks of a meta-batch of ``n_global``: a contiguous block of ``n_global / size``."""
    if n_global % w.size:
        raise ConfigError(f"meta_batch_size = {n_global} does not split evenly over {w.size} processes; "
                          f"use a multiple of {w.size} (each process adapts meta_batch_size / processes tasks)")
    n = n_global // w.size
    return slice(w.rank * n, (w.rank + 1) * n)


def task_keys(key: mx.array, n_local: int, group=None) -> mx.array:
    """Inner-loop keys of this process's ``n_local`` tasks: its block of ``split(key, n_local · size)``."""
    if group is None:
        return mx.random.split(key, n_local)
    r = group.rank()
    return mx.random.split(key, n_local * group.size())[r * n_local:(r + 1) * n_local]


def mean(tree: Tree, group=None) -> Tree:
    """Average a tree of per-process means over the processes (identity for a single process).

    Every process holds the mean over the same number of tasks, so this is the meta-batch mean.
    """
    if group is None:
        return tree
    # one all_sum per dtype over the concatenated leaves: each collective has a fixed cost (about 1 ms
    # on loopback), which would dominate a small meta-step if paid per leaf
    leaves = tree_flatten(tree)
    out = {}
    for dtype in {x.dtype for _, x in leaves}:
        group_leaves = [(k, x) for k, x in leaves if x.dtype == dtype]
        flat = mx.concatenate([x.reshape(-1) for _, x in group_leaves])
        total = mx.distributed.all_sum(flat, group=group) / group.size()
        offset = 0
        for k, x in group_leaves:
            out[k] = total[offset:offset + x.size].reshape(x.shape)
            offset += x.size
    results = iter([out[k] for k, _ in leaves])  # tree_map visits leaves in tree_flatten's order
    return tree_map(lambda _: next(results), tree)


def check_same(w: World, text: str, what: str = "config") -> None:
    """A DistributedError unless every process passes the same ``text`` (compared by hash)."""
    if w.group is None:
        return
    digest = hashlib.sha256(text.encode()).digest()[:8]
    words = mx.array([int.from_bytes(digest[i:i + 2], "little") for i in range(0, 8, 2)], dtype=mx.int32)
    lo = mx.distributed.all_min(words, group=w.group)
    hi = mx.distributed.all_max(words, group=w.group)
    if not bool(mx.array_equal(lo, hi)):
        raise DistributedError(f"the {w.size} processes were started with different {what}s; launch every "
                               f"process with the same command, config and files")


def lost_peer(e: BaseException) -> bool:
    """Whether an exception is MLX's report of a broken connection between processes."""
    return isinstance(e, RuntimeError) and any(s in str(e) for s in ("[ring]", "[mpi]", "[nccl]", "[jaccl]"))


def peer_timeout() -> float:
    """How long a meta-step may wait for the other processes: $REPTILE_FN_PEER_TIMEOUT or 600 s."""
    raw = os.environ.get(PEER_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_PEER_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{PEER_TIMEOUT_ENV}={raw!r} is not a positive number of seconds; unset it for the "
                          f"default ({DEFAULT_PEER_TIMEOUT:.0f} s) or set e.g. {PEER_TIMEOUT_ENV}=1800")
    return value


class Watchdog:
    """Ends the process with one clear error when a wait on the other processes exceeds ``timeout``.

    MLX 0.32's ring backend can leave a survivor blocked forever inside ``mx.eval`` when a peer dies
    (ml-explore/mlx#3862, #3742): no exception reaches Python, and the blocked main thread cannot be
    interrupted. So waits are marked with ``waiting()``, and a daemon thread writes ``message(seconds)``
    to stderr and exits with status 2 if one lasts too long. Only waits are watched, never a checkpoint
    write (those are atomic anyway).
    """

    def __init__(self, timeout: float, message: Callable[[float], str]):
        self.timeout, self.message, self.since = timeout, message, None
        threading.Thread(target=self._watch, daemon=True, name="reptile-fn-watchdog").start()

    @contextlib.contextmanager
    def waiting(self):
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 10))
            since = self.since
            if since is not None and time.monotonic() - since > self.timeout:
                sys.stderr.write(f"error: {self.message(self.timeout)}\n")
                sys.stderr.flush()
                os._exit(2)
