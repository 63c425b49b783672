"""Size limits of every integer setting, and which settings must be positive or non-negative.

A larger value than a limit would exhaust memory or time (or crash MLX) long before it did anything useful;
``REPTILE_FN_NO_LIMITS=1`` lifts the limits that are not hard.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from reptile_fn.errors import ConfigError

POSITIVE = {"tasks.train_shots", "tasks.n_way", "model.filters",
            "meta_iterations", "meta_batch_size", "inner_lr", "outer_lr", "log_every", "checkpoint_every",
            "tasks.k_shot", "tasks.query_size", "model.hidden", "model.depth", "eval.episodes", "eval.every",
            "eval.during_training_episodes", "eval.inner_lr", "eval.inner_batch_size", "inner_batch_size",
            "peft.rank", "peft.scale", "peft.head_scale", "peft.base_pretrain_iterations", "peft.target_rank", "model.image_size"}
# what to write instead of a non-positive value where the reader may want "never" or "none"
POSITIVE_HINTS = {
    "eval.every": "to evaluate only at the end, set it to meta_iterations or more",
    "log_every": "to log only at the end, set it to meta_iterations or more",
    "checkpoint_every": "to save only at the end (and on a stop), set it to meta_iterations or more",
    "eval.inner_lr": "null uses inner_lr", "eval.inner_batch_size": "null uses inner_batch_size",
    "inner_batch_size": "null takes the whole support set per step", "tasks.train_shots": "null uses k_shot",
}
NON_NEGATIVE = {"seed", "inner_steps", "tasks.num_train_tasks", "eval.inner_steps", "outer_lr_final"}


class Limit(NamedTuple):
    most: int  # the largest value allowed
    why: str  # what the limit protects
    hard: bool = False  # True: nothing can go beyond; False: REPTILE_FN_NO_LIMITS=1 lifts it to MLX's INT32_MAX


INT32_MAX = 2**31 - 1  # MLX array dimensions and counts are 32-bit ints
NO_LIMITS = "REPTILE_FN_NO_LIMITS"
_EPISODE = "every task's episode holds n_way × (k_shot + query_size) examples, for every task of a meta-batch; papers use 1-50"
LIMITS = {  # every integer size, with the reason; bounds no published few-shot setup comes near
    "seed": Limit(2**64 - 1, "MLX's PRNG keys take an unsigned 64-bit seed", hard=True),
    "meta_iterations": Limit(10_000_000, "every meta-iteration's PRNG key is drawn up front, 8 bytes each (memory), "
                             "and published runs use at most 100,000"),
    "meta_batch_size": Limit(1024, "a meta-batch's tasks are adapted at once, so memory grows with it; papers use 4-32"),
    "inner_steps": Limit(10_000, "every task of every meta-batch takes them, and MAML keeps them all in memory"),
    "inner_batch_size": Limit(100_000, "examples in one inner step's forward pass (memory)"),
    "log_every": Limit(10_000_000, "meta_iterations is at most 10,000,000, so a longer interval never comes"),
    "checkpoint_every": Limit(10_000_000, "meta_iterations is at most 10,000,000, so a longer interval never comes"),
    "tasks.k_shot": Limit(10_000, _EPISODE),
    "tasks.train_shots": Limit(10_000, _EPISODE),
    "tasks.query_size": Limit(10_000, _EPISODE),
    "tasks.num_train_tasks": Limit(1_000_000, "the pool's task keys are recomputed from the seed in every meta-step "
                                   "(time and memory); 0 draws a fresh task every time, an unlimited pool"),
    "tasks.n_way": Limit(1000, "classes per episode: episodes and the head grow with it (Omniglot has 1,623 characters)"),
    "model.hidden": Limit(8192, "an MLP hidden layer holds hidden² weights (256 MB at this limit), copied for every "
                          "task of a meta-batch (memory)"),
    "model.depth": Limit(64, "memory and time grow with the number of hidden layers"),
    "model.filters": Limit(1024, "conv4's activations of every image grow with its channels (memory)"),
    "model.image_size": Limit(512, "conv4 on 512×512 inputs already needs ~1 GB of activations per 100 images; "
                              "few-shot image models take small inputs (Omniglot 28, mini-ImageNet 84)"),
    "eval.episodes": Limit(1_000_000, "held-out episodes are adapted one after another (time); 500-10,000 is usual"),
    "eval.inner_steps": Limit(10_000, "each step adapts on a support set (every held-out episode's, or adapt's) and is scored (time)"),
    "eval.every": Limit(10_000_000, "meta_iterations is at most 10,000,000, so a longer interval never comes"),
    "eval.during_training_episodes": Limit(1_000_000, "held-out episodes are adapted one after another (time)"),
    "eval.inner_batch_size": Limit(100_000, "examples in one adaptation step's forward pass (memory)"),
    "peft.rank": Limit(1024, "each adapter holds (in + out) × rank weights, and a rank above a weight's own size "
                       "adds nothing"),
    "peft.target_rank": Limit(1_000_000, "the total rank of all adapters, each at most peft.rank (1024)"),
    "peft.base_pretrain_iterations": Limit(10_000_000, "pretraining steps run one after another (time)"),
}
"""The largest value of every integer setting, and why: a larger one would exhaust memory or time (or crash
MLX) long before it did anything useful. ``REPTILE_FN_NO_LIMITS=1`` lifts the limits that are not hard."""


def check_limit(key: str, v: int, source: str) -> None:
    """A ConfigError if ``v`` is above ``LIMITS[key]`` (lifted by REPTILE_FN_NO_LIMITS=1 unless hard)."""
    limit = LIMITS[key]
    lifted = not limit.hard and os.environ.get(NO_LIMITS, "") not in ("", "0")
    most = INT32_MAX if lifted else limit.most
    if v <= most:
        return
    if limit.hard or lifted:
        raise ConfigError(f"{source}: {key} = {v:,} is above {most:,}, the most it can be "
                          f"({limit.why if limit.hard else 'MLX array sizes are 32-bit'}); lower it")
    raise ConfigError(f"{source}: {key} = {v:,} is above {most:,}, the most reptile_fn allows: {limit.why}; lower it "
                      f"(if you really mean it, set {NO_LIMITS}=1 to lift the limit)")
