"""Seeded, class-disjoint splits shared by every data set: a split depends on the seed and the names
only, never on a library's RNG or the order of a listing."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from reptile_fn.errors import DataError


def shuffled(names: Sequence[str], seed: int) -> list[int]:
    """Indices of ``names`` ordered by SHA-256 of ``"<seed>:<name>"``: a seeded shuffle of names."""
    return sorted(range(len(names)), key=lambda i: hashlib.sha256(f"{seed}:{names[i]}".encode()).digest())


def group_split(groups: Sequence[str], *, divisor: int, seed: int, what: str) -> dict[str, np.ndarray]:
    """Indices of "test", "val" and "train" when whole groups are held out together.

    ``groups[i]`` is item i's group (an alphabet, a domain, or the item itself). The distinct groups,
    in a seeded shuffle (``shuffled``), give "test" and "val" round(n/divisor) each (at least 1) and
    "train" the rest, so the three splits never share a group.
    """
    n = len(set(groups))
    held = max(1, round(n / divisor))
    return _split(groups, held, held, seed, what)


def fraction_split(groups: Sequence[str], *, val: float, test: float, seed: int, what: str) -> dict[str, np.ndarray]:
    """Indices of "test", "val" and "train" holding out whole groups by fraction: of the n distinct groups in
    a seeded shuffle, "test" gets max(1, round(n·test)), "val" round(n·val) (at least 1 if ``val`` > 0), and
    "train" the rest (at least 1). ``group_split`` with ``divisor = d`` is the case val = test = 1/d."""
    n = len(set(groups))
    n_test = max(1, round(n * test))
    n_val = max(1, round(n * val)) if val > 0 else 0
    return _split(groups, n_test, n_val, seed, what)


def _split(groups: Sequence[str], n_test: int, n_val: int, seed: int, what: str) -> dict[str, np.ndarray]:
    names = sorted(set(groups))
    many = what + ("es" if what.endswith(("s", "x", "ch", "sh")) else "s")
    if len(names) < n_test + n_val + 1:
        raise DataError(f"a split by {what} into {n_test} test, {n_val} validation and at least 1 training {what} "
                        f"needs at least {n_test + n_val + 1} {many}, found {len(names)}; add {many} or lower "
                        "the held-out fractions")
    order = [names[i] for i in shuffled(names, seed)]
    chosen = {"test": set(order[:n_test]), "val": set(order[n_test:n_test + n_val]), "train": set(order[n_test + n_val:])}
    return {split: np.array([i for i, g in enumerate(groups) if g in group], dtype=np.int64)
            for split, group in chosen.items()}
