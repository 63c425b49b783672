"""Task families, their registry, and the task distribution that samples episodes from them.

A task is identified by ``(family_id, key)``: its parameters are
``FAMILIES[families[family_id]].sample_params(key)``. A ``TaskDistribution`` holds only plain
values (names, sizes, a seed), so its samplers are pure functions of their key and run inside
``mx.vmap`` and ``mx.compile`` (the training pool is recomputed from the seed, not captured).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import mlx.core as mx

from reptile_fn.episode import Episode
from reptile_fn.errors import ConfigError, check_int
from reptile_fn.tasks import sine, toy2d

Params = dict[str, mx.array]


class TaskFamily(NamedTuple):
    """A family of tasks: draw one task's parameters, then data from that task.

    ``sample_data(params, key, n)`` returns n points for regression (y float32 (n, out_dim)) and n
    points *per class* for classification (x float32 (n·out_dim, in_dim), y int32 class ids).
    """

    name: str
    kind: str  # "regression" | "classification"
    in_dim: int
    out_dim: int  # regression output size, or the number of classes
    sample_params: Callable[[mx.array], Params]
    sample_data: Callable[[Params, mx.array, int], tuple[mx.array, mx.array]]


FAMILIES: dict[str, TaskFamily] = {
    family.name: family
    for family in (
        TaskFamily("sine", "regression", 1, 1, sine.sample_params, sine.sample_data),
        TaskFamily("linear", "classification", 2, toy2d.N_CLASSES,
                   toy2d.sample_linear_params, toy2d.sample_linear_data),
        TaskFamily("xor", "classification", 2, toy2d.N_CLASSES,
                   toy2d.sample_xor_params, toy2d.sample_xor_data),
        TaskFamily("circles", "classification", 2, toy2d.N_CLASSES,
                   toy2d.sample_circles_params, toy2d.sample_circles_data),
        TaskFamily("spiral", "classification", 2, toy2d.N_CLASSES,
                   toy2d.sample_spiral_params, toy2d.sample_spiral_data),
    )
}


class Tasks(NamedTuple):
    """A batch of task identities: task i is family ``family_ids[i]``, params from ``keys[i]``."""

    family_ids: mx.array  # (n,) int32, indices into TaskDistribution.families
    keys: mx.array  # (n, 2) uint32 PRNG keys


# Branches of a sampler's key, so fresh training tasks and held-out test tasks never share a stream.
_TRAIN_BRANCH, _TEST_BRANCH = 0, 1


@dataclass(frozen=True, eq=False)
class TaskDistribution:
    """Few-shot episodes from a mixture of task families, with a finite or infinite training pool.

    The training pool is ``num_train_tasks`` tasks with keys ``split(key(seed), num_train_tasks)``
    and family ids ``i % len(families)``; ``num_train_tasks = 0`` draws a fresh task every time.
    Test tasks are always fresh, from a key branch the training stream never uses.
    Every sampler is pure in its key: same key, same episodes; vmap- and compile-safe.
    """

    families: tuple[str, ...]  # a bare name is accepted and becomes a 1-tuple
    k_shot: int
    query_size: int
    num_train_tasks: int
    seed: int

    def __post_init__(self) -> None:
        families = self.families
        families = (families,) if isinstance(families, str) else tuple(families)
        _check_families(families)
        check_int("k_shot", self.k_shot, 1, "support examples per class; regression: points")
        check_int("query_size", self.query_size, 1, "query examples per class; regression: points")
        check_int("num_train_tasks", self.num_train_tasks, 0, "training pool size; 0 = infinite")
        check_int("seed", self.seed, 0, "seed of the training pool")
        object.__setattr__(self, "families", families)  # frozen: normalise once, here
        for name in ("k_shot", "query_size", "num_train_tasks", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def kind(self) -> str:
        return FAMILIES[self.families[0]].kind

    @property
    def in_dim(self) -> int:
        return FAMILIES[self.families[0]].in_dim

    @property
    def out_dim(self) -> int:
        """Regression output size, or the number of classes (n_way) for classification."""
        return FAMILIES[self.families[0]].out_dim

    def train_pool(self) -> Tasks:
        """All ``num_train_tasks`` tasks of the training pool, in order."""
        if self.num_train_tasks == 0:
            raise ConfigError(
                "num_train_tasks = 0 means an infinite training pool, which has no list of tasks; "
                "set num_train_tasks > 0 for a finite pool"
            )
        n = self.num_train_tasks
        family_ids = mx.arange(n, dtype=mx.int32) % len(self.families)
        return Tasks(family_ids, mx.random.split(mx.random.key(self.seed), n))

    def sample_train_tasks(self, key: mx.array, n_tasks: int) -> Tasks:
        """n_tasks training tasks, uniformly with replacement from the pool (fresh if infinite)."""
        if self.num_train_tasks == 0:
            return self._fresh_tasks(mx.random.split(key)[_TRAIN_BRANCH], n_tasks)
        pool = self.train_pool()
        index = mx.random.randint(0, self.num_train_tasks, (n_tasks,), key=key)
        return Tasks(pool.family_ids[index], pool.keys[index])

    def sample_test_tasks(self, key: mx.array, n_tasks: int) -> Tasks:
        """n_tasks fresh held-out tasks (never drawn from the training pool's key stream)."""
        return self._fresh_tasks(mx.random.split(key)[_TEST_BRANCH], n_tasks)

    def task_params(self, tasks: Tasks) -> dict[str, Params]:
        """Parameters of every task under each family: ``{name: params batched over tasks}``.

        Only the entry of a task's own family is meaningful for it (``tasks.family_ids``).
        """
        return {name: mx.vmap(FAMILIES[name].sample_params)(tasks.keys) for name in self.families}

    def episodes(self, tasks: Tasks, key: mx.array) -> Episode:
        """One episode per task, with fresh support and query data drawn from ``key``."""
        data_keys = mx.random.split(key, tasks.keys.shape[0])
        return mx.vmap(self._episode)(tasks.family_ids, tasks.keys, data_keys)

    def sample_train(self, key: mx.array, n_tasks: int) -> Episode:
        """``episodes(sample_train_tasks(k₁, n_tasks), k₂)`` with ``k₁, k₂ = split(key)``."""
        tasks_key, data_key = mx.random.split(key)
        return self.episodes(self.sample_train_tasks(tasks_key, n_tasks), data_key)

    def sample_test(self, key: mx.array, n_tasks: int) -> Episode:
        """``episodes(sample_test_tasks(k₁, n_tasks), k₂)`` with ``k₁, k₂ = split(key)``."""
        tasks_key, data_key = mx.random.split(key)
        return self.episodes(self.sample_test_tasks(tasks_key, n_tasks), data_key)

    def _fresh_tasks(self, key: mx.array, n_tasks: int) -> Tasks:
        family_key, task_key = mx.random.split(key)
        family_ids = mx.random.randint(0, len(self.families), (n_tasks,), key=family_key)
        return Tasks(family_ids.astype(mx.int32), mx.random.split(task_key, n_tasks))

    def _episode(self, family_id: mx.array, task_key: mx.array, data_key: mx.array) -> Episode:
        """One task's episode: every family's episode, then its own family's picked by mx.where."""
        support_key, query_key = mx.random.split(data_key)
        episode = None
        for i, name in enumerate(self.families):
            family = FAMILIES[name]
            params = family.sample_params(task_key)
            candidate = Episode(
                *family.sample_data(params, support_key, self.k_shot),
                *family.sample_data(params, query_key, self.query_size),
            )
            if episode is None:
                episode = candidate
            else:
                pick = family_id == i
                episode = Episode(*(mx.where(pick, c, e) for c, e in zip(candidate, episode)))
        return episode


def make_distribution(
    families: Sequence[str] | str,
    *,
    k_shot: int,
    query_size: int,
    num_train_tasks: int,
    seed: int,
) -> TaskDistribution:
    """A validated TaskDistribution; ``families`` is one name or a sequence of names in FAMILIES."""
    return TaskDistribution(families, k_shot, query_size, num_train_tasks, seed)


def _check_families(names: tuple[str, ...]) -> None:
    valid = "valid names: " + ", ".join(sorted(FAMILIES))
    if not names:
        raise ConfigError(f"families is empty: name at least one task family ({valid})")
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"task family names must be strings, got {name!r} ({valid})")
        if name not in FAMILIES:
            close = difflib.get_close_matches(name, FAMILIES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown task family {name!r}{hint} ({valid})")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        listed = ", ".join(duplicates)
        raise ConfigError(f"task families listed more than once: {listed}; list each family once")
    first = FAMILIES[names[0]]
    for name in names[1:]:
        other = FAMILIES[name]
        if (other.kind, other.in_dim, other.out_dim) != (first.kind, first.in_dim, first.out_dim):
            raise ConfigError(
                f"cannot mix task families {first.name!r} ({_signature(first)}) and {other.name!r} "
                f"({_signature(other)}): a mixture needs one kind, in_dim and out_dim; "
                f"list only families that match: {_groups()}"
            )


def _signature(family: TaskFamily) -> str:
    return f"{family.kind}, in_dim={family.in_dim}, out_dim={family.out_dim}"


def _groups() -> str:
    """Registered families grouped by (kind, in_dim, out_dim): "[sine] or [linear, xor, ...]"."""
    groups: dict[tuple, list[str]] = {}
    for name, family in FAMILIES.items():
        groups.setdefault((family.kind, family.in_dim, family.out_dim), []).append(name)
    return " or ".join("[" + ", ".join(names) + "]" for names in groups.values())
