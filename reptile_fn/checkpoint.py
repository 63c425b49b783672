"""Checkpoints: one safetensors file holding the parameter and state trees, with JSON metadata.

Leaves are stored under ``params.<path>`` and ``state.<path>``; metadata holds the run config,
the iteration and a format tag. Writes are atomic: a temporary file in the same folder, then
``os.replace``, so a crash never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map_with_path

from reptile_fn.errors import CheckpointError
from reptile_fn.tree import Tree

FORMAT = "reptile_fn/1"


def save(path: str | Path, params: Tree, state: Tree | None = None, metadata: dict | None = None) -> Path:
    """Atomically write params (and optional state) with JSON-serialisable metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"params.{k}": v for k, v in tree_flatten(params)}
    arrays.update({f"state.{k}": v for k, v in tree_flatten(state or {})})
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")
    try:
        mx.save_safetensors(str(tmp), arrays, metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(path: str | Path) -> tuple[dict[str, mx.array], dict]:
    """Read a checkpoint: (flat arrays keyed ``params.*``/``state.*``, decoded metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .safetensors file written by `reptile-fn train`")
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
    except Exception as e:  # mlx raises RuntimeError/ValueError with a C++ message
        raise CheckpointError(f"checkpoint {path} could not be read ({e}); it is corrupt or not a safetensors file") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a reptile_fn checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        decoded = {k: json.loads(v) for k, v in meta.items() if k != "format"}
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata; re-create it with `reptile-fn train`") from None
    return arrays, decoded


def restore(arrays: dict[str, mx.array], prefix: str, like: Tree, *, source: str = "checkpoint") -> Tree:
    """Fill a tree shaped like ``like`` from flat arrays under ``prefix``, checking every shape."""

    def pick(path: str, ref: mx.array) -> mx.array:
        key = f"{prefix}.{path}"
        if key not in arrays:
            raise CheckpointError(f"{source} has no tensor {key!r}; it was written for a different model or algorithm")
        got = arrays[key]
        if got.shape != ref.shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(got.shape)} but the model expects {tuple(ref.shape)}; "
                                  "use the config the checkpoint was trained with")
        return got.astype(ref.dtype)

    return tree_map_with_path(pick, like)
