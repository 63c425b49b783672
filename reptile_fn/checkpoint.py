"""Checkpoints: one safetensors file holding the parameter and state trees, with JSON metadata.

Leaves are stored under ``params.<path>`` and ``state.<path>``; metadata holds the run config,
the iteration and a format tag. Writes are atomic (``io.atomic_path``), so a crash never leaves a
half-written checkpoint in place of a good one.

A parameter leaf still equal to the ``reference`` the writer gives (the model's own init from the
run's seed, which the reader rebuilds: a frozen pretrained encoder, say) is stored as the SHA-256 of
its bytes only, if larger than that (``derived.params.<path>``), and ``restore`` takes it from the tree it is given after
checking that digest. A LoRA run over all-MiniLM-L6-v2 then writes its adapters, head and optimizer
state (under 1 MB), not the 90 MB encoder again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path

from reptile_fn import io
from reptile_fn.errors import CheckpointError
from reptile_fn.tree import Tree

FORMAT = "reptile_fn/1"
SEAL = "tensors_sha256"  # metadata: io.digest of every stored tensor (checkpoints since 2026-12-01), checked on load
DERIVED = "derived"
DIGEST_BYTES = 32  # leaves this small are stored as they are


def digest(a: mx.array) -> mx.array:
    """``io.digest`` of an array as the uint8 (32,) tensor a checkpoint stores."""
    return mx.array(np.frombuffer(bytes.fromhex(io.digest(a)), dtype=np.uint8))


def save(path: str | Path, params: Tree, state: Tree | None = None, metadata: dict | None = None, *,
         reference: Tree | None = None) -> Path:
    """Atomically write params (and optional state) with JSON-serialisable metadata.

    ``reference``: a tree the reader rebuilds (``restore``'s ``like``); params leaves equal to it (and
    larger than a digest) are written as their digest only.
    """
    if {"format", SEAL} & set(metadata or {}):  # the loader checks them: a caller's value made the file unreadable
        raise ValueError(f"checkpoint.save: metadata keys 'format' and {SEAL!r} are the checkpoint's own (its reader "
                         "checks them); name yours otherwise")
    for name, tree in (("params", params), ("state", state or {})):
        flat = tree_flatten(tree)
        odd = next((p for p, v in flat if not isinstance(v, mx.array)), None)
        if odd is not None:  # MLX's safetensors writer says only "std::bad_cast"
            raise TypeError(f"checkpoint.save: {name}.{odd} is a {type(dict(flat)[odd]).__name__}, not an mx.array; "
                            "convert it (mx.array(x)) or keep it in the metadata")
        if len({p for p, _ in flat}) != len(flat):  # {"a.b": x, "a": {"b": y}}: one would overwrite the other
            raise ValueError(f"checkpoint.save: two leaves of {name} have the same dotted path; rename the key that "
                             "holds a '.'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = dict(tree_flatten(reference)) if reference is not None else {}
    arrays = {}
    for k, v in tree_flatten(params):
        r = ref.get(k)
        if (r is not None and r.shape == v.shape and r.dtype == v.dtype and v.nbytes > DIGEST_BYTES
                and (r is v or mx.array_equal(r, v).item())):
            arrays[f"{DERIVED}.params.{k}"] = digest(v)
        else:
            arrays[f"params.{k}"] = v
    arrays.update({f"state.{k}": v for k, v in tree_flatten(state or {})})
    meta = {"format": FORMAT, SEAL: json.dumps(io.digest(arrays)), **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    with io.atomic_path(path, ".safetensors") as tmp:
        mx.save_safetensors(str(tmp), arrays, metadata=meta)
    return path


def load(path: str | Path) -> tuple[dict[str, mx.array], dict]:
    """Read a checkpoint: (flat arrays keyed ``params.*``/``state.*``, decoded metadata)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a folder or not a regular file; pass the .safetensors file "
                              "written by `reptile-fn train` (a run folder stands for the checkpoint in it)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .safetensors file written by `reptile-fn train`")
    io.check_readable(path)  # mx.load would call an unreadable file corrupt
    try:
        arrays, meta = mx.load(str(path), format="safetensors", return_metadata=True)  # whatever its extension
    except Exception as e:  # mlx raises RuntimeError/ValueError with a C++ message
        raise CheckpointError(f"checkpoint {path} could not be read ({e}): it is corrupt or not a safetensors file; "
                              "pass the checkpoint.safetensors of a run folder (copy it again if it was cut short)") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a reptile_fn checkpoint (format {meta.get('format')!r}, expected {FORMAT!r}); "
                              "pass a checkpoint.safetensors written by `reptile-fn train`, or a shipped name")
    try:
        decoded = {k: json.loads(v) for k, v in meta.items() if k != "format"}
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata; re-create it with `reptile-fn train`") from None
    seal = decoded.pop(SEAL, None)
    damage = _layout_problem(path) or (seal is not None and io.digest(arrays) != seal
                                       and "its tensors are not the ones it was written with")
    if damage:
        raise CheckpointError(f"checkpoint {path} was altered or damaged ({damage}); use a checkpoint written by "
                              "`reptile-fn train` (copy it again, or resume from the run's own folder)")
    return arrays, decoded


def _layout_problem(path: Path) -> str | None:
    """What is wrong with where a safetensors file's header puts its tensors, if anything: the format asks for
    byte ranges that tile the data exactly (MLX's reader does not check that overlapping ranges are not shared)."""
    with open(path, "rb") as f:
        size, head = os.fstat(f.fileno()).st_size, f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else size
        try:
            header = json.loads(f.read(n)) if n <= min(size - 8, 100 << 20) else None
        except ValueError:
            header = None
    if not isinstance(header, dict):
        return None  # mx.load has read it, so this cannot be: nothing to add
    try:
        spans = sorted((int(v["data_offsets"][0]), int(v["data_offsets"][1]))
                       for k, v in header.items() if k != "__metadata__")
    except (TypeError, KeyError, IndexError, ValueError):
        return "its header does not give each tensor's byte range"
    end = 0
    for begin, stop in spans:
        if begin != end or stop < begin:
            return "its tensors' byte ranges overlap or leave gaps"
        end = stop
    return None if end == size - 8 - n else "its data is not the length its header gives"


def restore(arrays: dict[str, mx.array], prefix: str, like: Tree, *, source: str = "checkpoint",
            fresh=None) -> Tree:
    """Fill a tree shaped like ``like`` from flat arrays under ``prefix``, checking every shape.

    ``fresh``: a path predicate; the leaves it matches keep ``like``'s value, whatever the file holds (a head that
    every task rebuilds, evaluated at another ``n_way``)."""

    def pick(path: str, ref: mx.array) -> mx.array:
        if fresh is not None and fresh(path):
            return ref
        key = f"{prefix}.{path}"
        if key not in arrays and f"{DERIVED}.{key}" in arrays:  # saved as the reference's own value
            if not np.array_equal(np.array(arrays[f"{DERIVED}.{key}"]), np.array(digest(ref))):
                raise CheckpointError(f"{source} stores {key} as the model's initial value (it was not trained), but "
                                      "the model built now has another value there; build it as the run did (the same "
                                      "model.encoder / peft.base files and seed)")
            return ref
        if key not in arrays:
            raise CheckpointError(f"{source} has no tensor {key!r}; it was written for a different model or algorithm")
        got = arrays[key]
        if got.shape != ref.shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(got.shape)} but the model expects {tuple(ref.shape)}; "
                                  "use the config the checkpoint was trained with")
        if mx.issubdtype(got.dtype, mx.floating) != mx.issubdtype(ref.dtype, mx.floating):
            name = lambda dtype: str(dtype).rsplit(".", 1)[-1]  # noqa: E731 - mlx.core.int32 -> int32
            raise CheckpointError(f"{source}: {key} holds {name(got.dtype)} values but the model's are {name(ref.dtype)}; the file "
                                  "was altered or written by other code: use a checkpoint written by `reptile-fn train`")
        return got.astype(ref.dtype)

    restored = tree_map_with_path(pick, like)
    expected = {f"{prefix}.{k}" for k, _ in tree_flatten(like)}
    extra = sorted(k.removeprefix(f"{DERIVED}.") for k in arrays
                   if k.removeprefix(f"{DERIVED}.").startswith(f"{prefix}.") and k.removeprefix(f"{DERIVED}.") not in expected)
    if extra and fresh is None:  # a fresh head at another n_way may leave the stored one unused
        raise CheckpointError(f"{source} has tensors the model does not ({', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}); "
                              "it was written for a different model or altered: use the config it was trained with, or a "
                              "checkpoint written by `reptile-fn train`")
    return restored
