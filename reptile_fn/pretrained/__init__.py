"""Meta-learned initializations that ship with the package, loadable by name.

``reptile-fn eval --checkpoint omniglot-5w1s --data-dir DIR`` (or ``reptile_fn.run.load("omniglot-5w1s")``)
resolves a name listed here to the safetensors file beside this module. Each file is a normal
checkpoint (parameters, algorithm state, the run config in its metadata, with ``tasks.data_dir``
unset so that ``--data-dir`` / ``$REPTILE_FN_DATA`` apply). ``research/results.md`` says how each
was trained and what it scores.
"""

from __future__ import annotations

from pathlib import Path

from reptile_fn.errors import CheckpointError

HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """Names of the shipped initializations (files ``<name>.safetensors`` in this folder)."""
    return sorted(p.stem for p in HERE.glob("*.safetensors"))


def resolve(checkpoint: str | Path) -> Path:
    """A checkpoint path as given if it exists, else the shipped file of that name."""
    p = Path(checkpoint)
    if p.exists():
        return p
    if p.suffix == "" and p.name == str(checkpoint) and (HERE / f"{p.name}.safetensors").is_file():
        return HERE / f"{p.name}.safetensors"
    if p.suffix == "" and p.name == str(checkpoint):
        shipped = ", ".join(names()) or "none"
        raise CheckpointError(f"{checkpoint!r} is neither a file nor a shipped initialization "
                              f"(shipped: {shipped}); pass a checkpoint.safetensors written by `reptile-fn train`")
    return p  # a path that does not exist: checkpoint.load names it


def is_shipped(path: Path) -> bool:
    return Path(path).resolve().parent == HERE
