"""Package a finished run's parameters as a shipped initialization (``reptile_fn/pretrained/<name>``).

The checkpoint is re-saved with its stored config changed by ``overrides`` (e.g. the shot count, the split
that ``eval`` scores by default, no machine-local data folder) after a round trip through the run's own
model, so the file loads by name exactly as a training run's checkpoint would. Model cards (``<name>.json``)
are written by the benchmark that scored the run (benchmarks/omniglot.py, benchmarks/text.py).
"""

from __future__ import annotations

from pathlib import Path

import reptile_fn  # noqa: F401  (before mlx.core: loads OpenBLAS on Linux)
from reptile_fn import checkpoint
from reptile_fn import config as C
from reptile_fn import run as R


PRETRAINED = Path(__file__).resolve().parents[1] / "reptile_fn" / "pretrained"


def ship(run: Path, name: str, overrides: list[str] = ()) -> Path:
    """Write ``PRETRAINED/<name>.safetensors`` from ``run``'s checkpoint with ``overrides`` applied to its config."""
    built, params, state, iteration = R.load(run / R.CHECKPOINT, ["tasks.data_dir=null", *overrides],
                                             with_tasks=False)  # rebuilt as the run was (its seed, its base)
    path = PRETRAINED / f"{name}.safetensors"
    checkpoint.save(path, params, state, {"config": C.to_dict(built.cfg), "iteration": iteration,
                                          "source": f"benchmarks/shipping.py from {run.name}"},
                    reference=built.rebuilt_init)  # a frozen base the loader rebuilds (an encoder): its digest only
    return path

