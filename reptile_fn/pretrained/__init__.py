"""Meta-learned initializations that ship with the package, loadable by name.

``reptile-fn eval --checkpoint omniglot-5w1s --data-dir DIR`` (or ``reptile_fn.run.load("omniglot-5w1s")``)
resolves a name listed here to the safetensors file beside this module. Each file is a normal
checkpoint (parameters, algorithm state, the run config in its metadata, with ``tasks.data_dir``
unset so that ``--data-dir`` / ``$REPTILE_FN_DATA`` apply), with a model card ``<name>.json`` (protocol,
training, scores with CIs, the commands; ``card``, ``format_card``; ``reptile-fn info --checkpoint NAME``).
"""

from __future__ import annotations

import json
from pathlib import Path

from reptile_fn.errors import CheckpointError

HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """Names of the shipped initializations (files ``<name>.safetensors`` in this folder)."""
    return sorted(p.stem for p in HERE.glob("*.safetensors"))


RUN_CHECKPOINT = "checkpoint.safetensors"  # what ``reptile-fn train`` writes into its run folder


def plain_names() -> list[str]:
    """The shipped initializations of a whole network (what ``init`` and ``peft.base`` take), not adapters."""
    from reptile_fn import checkpoint as ck

    return [n for n in names()
            if ck.load(HERE / f"{n}.safetensors")[1].get("config", {}).get("peft", {}).get("method", "none") == "none"]


def resolve(checkpoint: str | Path) -> Path:
    """A checkpoint path as given if it exists (a run folder: its checkpoint.safetensors), else the shipped file
    of that name."""
    if not str(checkpoint).strip():  # Path("") would be the working directory
        raise CheckpointError("the checkpoint is empty (an unset shell variable?); pass a run folder, its "
                              f"{RUN_CHECKPOINT}, or a shipped initialization's name ({', '.join(names()) or 'none'})")
    p = Path(checkpoint).expanduser()
    if p.is_dir():
        if (p / RUN_CHECKPOINT).is_file():
            return p / RUN_CHECKPOINT
        if (p / RUN_CHECKPOINT).exists() or (p / RUN_CHECKPOINT).is_symlink():
            raise CheckpointError(f"{p / RUN_CHECKPOINT} is a folder, a broken link or not a regular file; put the run's "
                                  "checkpoint file there (copy it again), or pass another run folder")
        raise CheckpointError(f"{checkpoint} is a folder without a {RUN_CHECKPOINT}; pass a run folder written by "
                              f"`reptile-fn train` (or its {RUN_CHECKPOINT}), or a shipped initialization's name")
    if p.exists():
        return p
    if p.suffix == "" and p.name == str(checkpoint) and (HERE / f"{p.name}.safetensors").is_file():
        return HERE / f"{p.name}.safetensors"
    if p.suffix == "" and p.name == str(checkpoint):
        shipped = ", ".join(names()) or "none"
        raise CheckpointError(f"'{checkpoint}' is neither a file nor a shipped initialization "
                              f"(shipped: {shipped}); pass a checkpoint.safetensors written by `reptile-fn train`")
    shipped = ", ".join(names()) or "none"
    raise CheckpointError(f"{checkpoint} does not exist; pass a run folder written by `reptile-fn train`, its "
                          f"{RUN_CHECKPOINT}, or a shipped initialization's name ({shipped})")


def card(name_or_path: str | Path) -> dict | None:
    """The model card of a shipped initialization (``<name>.json`` beside it), or None."""
    path = HERE / f"{Path(name_or_path).stem}.json"
    try:
        shipped = is_shipped(resolve(name_or_path))
    except CheckpointError:  # nothing there: no card (the caller says what is missing)
        return None
    if not shipped or not path.exists():
        return None
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
        format_card(c)  # every field it shows is there
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise CheckpointError(f"the model card {path} of the shipped {path.stem} is damaged; reinstall reptile_fn "
                              "(pip install --force-reinstall reptile-fn, or git checkout in a clone)") from None
    return c


def format_card(c: dict) -> str:
    """A model card as a few lines: what it is, how it was trained, what it scores and the command to check it."""
    t = c["training"]
    paper = f" (paper: {t['paper_meta_iterations']:,})" if t.get("paper_meta_iterations") else ""
    lines = [f"{c['name']}: {c['task']}", f"  protocol   {c['protocol']}",
             f"  trained    {t['algorithm']}; {t['meta_iterations']:,} meta-iterations{paper}, meta-batch "
             f"{t['meta_batch_size']}", f"  command    {t['command']}"]
    for s in c["scores"]:
        steps = "" if f"after {s['steps']} inner steps" in s["mode"] else f", {s['steps']} steps"  # said once
        lines.append(f"  score      {s['accuracy']:.2f} ± {s['ci95']:.2f}% on {s['split']}, {s['mode']}, {s['episodes']} "
                     f"episodes{steps}")
    p = c.get("paper")
    if p:
        lines.append(f"  paper      {p['transductive']} transductive / {p['non_transductive']} non-transductive ({p['note']})")
    lines += [f"  check      {c['evaluate']}", f"  notes      {c['notes']}"]
    return "\n".join(lines)


def default_out(checkpoint: Path, sub: str) -> Path:
    """Where a command writes unless told: ``<run>/<sub>``, or ``runs/<sub>/<name>`` for a shipped init."""
    return Path("runs") / sub / checkpoint.stem if is_shipped(checkpoint) else checkpoint.parent / sub


def is_shipped(path: Path) -> bool:
    return Path(path).resolve().parent == HERE
