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
    names = sorted(set(groups))
    held = max(1, round(len(names) / divisor))
    if len(names) < 2 * held + 1:
        raise DataError(f"a split by {what} needs at least 3 {what}s, found {len(names)}")
    order = [names[i] for i in shuffled(names, seed)]
    chosen = {"test": set(order[:held]), "val": set(order[held:2 * held]), "train": set(order[2 * held:])}
    return {split: np.array([i for i, g in enumerate(groups) if g in group], dtype=np.int64)
            for split, group in chosen.items()}
