"""Adapter checkpoints: ``adapters.safetensors`` + ``adapter_config.json``, tied to their base.

The safetensors file holds the meta-learned leaves of a PEFT run (the adapter, and the head when
it was meta-learned too), under their paths in the ``{"base": ..., "adapter": ...}`` tree. The JSON
config records rank, scale, targets, the per-weight ranks, and ``base_hash``: a SHA-256 over the
*frozen* base leaves (paths, shapes, dtypes and bytes). ``load_adapters`` refuses a base whose
frozen leaves hash differently, so an adapter is never silently applied to the wrong network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from reptile_fn import io
from reptile_fn import tree as T
from reptile_fn.errors import CheckpointError
from reptile_fn.tree import Tree

ADAPTERS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def tree_hash(tree: Tree) -> str:
    """SHA-256 of a tree's leaves (``reptile_fn.io.digest``)."""
    return io.digest(tree)


def split_learned(params: Tree, learned: list[str]) -> tuple[Tree, Tree]:
    """(meta-learned leaves, frozen base leaves) of a ``{"base", "adapter"}`` tree."""
    keep = set(learned)
    return T.partition(params, lambda p: p in keep)


def save_adapters(directory: str | Path, params: Tree, learned: list[str], config: dict) -> None:
    """Write the meta-learned leaves and their config as a pair: both go into a new folder beside ``directory``,
    which then takes its place (two renames), so a reader never sees one file of the old pair beside one of
    the new; a crash between the renames leaves the old folder under a hidden name, which ``_recovered`` restores."""
    d = Path(directory)
    d.parent.mkdir(parents=True, exist_ok=True)
    _recovered(d)
    chosen, frozen = split_learned(params, learned)
    meta = {**config, "learned": sorted(learned), "base_hash": tree_hash(frozen.get("base", {}))}
    new = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}.", suffix=".new"))
    try:
        with io.atomic_path(new / ADAPTERS, ".safetensors") as tmp:
            mx.save_safetensors(str(tmp), dict(tree_flatten(chosen)))
        io.write_text(new / ADAPTER_CONFIG, json.dumps(meta, indent=2, sort_keys=True))
        os.chmod(new, io.DIR_MODE)
        old = d.with_name(f".{d.name}.{new.name.split('.')[-2]}.old")
        if d.exists():
            os.rename(d, old)
        os.rename(new, d)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(new, ignore_errors=True)


def _recovered(d: Path) -> Path:
    """``d``, put back from its hidden old copy if a save died between its two renames; stale new folders removed."""
    if not d.exists():
        olds = sorted(d.parent.glob(f".{d.name}.*.old"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.rename(olds[-1], d)
    for stale in d.parent.glob(f".{d.name}.*.new"):
        shutil.rmtree(stale, ignore_errors=True)
    return d


def read_adapter_config(directory: str | Path) -> dict:
    path = _recovered(Path(directory)) / ADAPTER_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; point at a folder written by a PEFT run "
                              f"(it holds {ADAPTERS} and {ADAPTER_CONFIG})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-export the adapter") from None


def load_adapters(directory: str | Path, base: Tree) -> tuple[Tree, dict]:
    """Put a saved adapter (and head) onto ``base``: returns (``{"base", "adapter"}`` params, config).

    ``base`` is the plain base parameter tree the adapter was trained on. Raises ``CheckpointError``
    when its frozen leaves do not hash to the recorded ``base_hash`` (the wrong base network).
    """
    d = Path(directory)
    cfg = read_adapter_config(d)
    io.check_readable(d / ADAPTERS)  # mx.load would call an unreadable file corrupt
    try:
        arrays = mx.load(str(d / ADAPTERS))
    except Exception as e:  # noqa: BLE001 - MLX raises plain exceptions for missing or corrupt files
        raise CheckpointError(f"cannot read {d / ADAPTERS} ({e}); re-export the adapter") from None
    learned = tree_unflatten(list(arrays.items()))
    params = T.combine({"base": T.partition(base, lambda p: f"base.{p}" not in set(cfg["learned"]))[0]}, learned)
    _, frozen = split_learned(params, cfg["learned"])
    got = tree_hash(frozen.get("base", {}))
    if got != cfg["base_hash"]:
        raise CheckpointError(
            f"the adapter in {d} was trained on a different base network (base hash {cfg['base_hash'][:12]}…, "
            f"this base {got[:12]}…); load it onto the base it was made for "
            f"({cfg.get('base_source', 'see adapter_config.json')})")
    return params, cfg
