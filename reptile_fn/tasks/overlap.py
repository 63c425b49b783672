"""Which "held-out" classes a run has in fact seen: the items (images, sentences) two samplers share.

``eval --data`` scores a run on a user's data as new classes. A copy of the training data under another name (a zip
of the training folder, a CSV written again) or a folder that repeats some training classes would be scored as
held-out and read as generalization; comparing item digests finds them whatever the files are called."""

from __future__ import annotations

import hashlib

import numpy as np


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


def class_items(sampler, part: str) -> list[set[bytes]] | None:
    """Per class of ``part`` ("train" or "test"), the digests of its items: decoded images (``ImageTasks``, Omniglot's
    drawings: an image folder read as an Omniglot run reads it gives the same bytes) or a sentence's token ids
    (``TextTasks``); None for a sampler that keeps no items (synthetic families)."""
    if hasattr(sampler, f"{part}_images") and not hasattr(sampler, f"{part}_counts"):  # Omniglot: (classes, 20, S, S)
        return [{_digest(drawing) for drawing in c} for c in np.array(getattr(sampler, f"{part}_images"))]
    if hasattr(sampler, f"{part}_images"):
        images = np.array(getattr(sampler, f"{part}_images"))
        counts, offsets = (np.array(getattr(sampler, f"{part}_{f}")) for f in ("counts", "offsets"))
        return [{_digest(images[o + i]) for i in range(n)} for o, n in zip(offsets.tolist(), counts.tolist())]
    if hasattr(sampler, f"{part}_x"):
        x, counts = np.array(getattr(sampler, f"{part}_x")), np.array(getattr(sampler, f"{part}_counts"))
        return [{_digest(ids[mask > 0]) for ids, mask in x[c, :n]} for c, n in enumerate(counts.tolist())]
    return None


def class_names(sampler, part: str) -> tuple[str, ...]:
    return tuple(getattr(sampler, f"{part}_classes", None) or getattr(sampler, f"{part}_names", None) or ())


def seen_classes(trained, held, *, share: float = 0.25) -> list[tuple[str, float]]:
    """``(name, fraction)`` of every held-out class of sampler ``held`` with at least ``share`` of its items among
    the meta-training items of sampler ``trained`` (exact copies only: the same decoded pixels or tokens; a flipped
    or re-encoded image is another item); empty when either keeps no items."""
    seen, mine = class_items(trained, "train"), class_items(held, "test")
    if seen is None or mine is None:
        return []
    every = set().union(*seen)
    names = class_names(held, "test") or tuple(f"class {i}" for i in range(len(mine)))
    shares = [(name, len(items & every) / len(items)) for name, items in zip(names, mine) if items]
    return [(name, f) for name, f in shares if f >= share]
