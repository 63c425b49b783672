"""Shared fixtures for the config/CLI/checkpoint/train tests: a tiny, fast run configuration."""

import pytest

from reptile_fn import config as C

# A run that meta-trains in well under a second on a laptop CPU. The sizes are chosen so that
# log (5), eval (10) and checkpoint (10) boundaries all occur within the 20 meta-iterations.
TINY = (
    "meta_iterations=20",
    "eval.episodes=20",
    "eval.every=10",
    "eval.during_training_episodes=10",
    "log_every=5",
    "checkpoint_every=10",
    "model.hidden=16",
    "tasks.num_train_tasks=100",
)


def quiet(_msg: str) -> None:
    """A ``log`` callback for ``train`` that prints nothing."""


@pytest.fixture
def tiny_cfg() -> C.Config:
    return C.load(None, TINY)

