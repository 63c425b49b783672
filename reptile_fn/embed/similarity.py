"""Family identification: can a task embedding name the family a fresh task was drawn from?

Two sets of fresh held-out tasks (``TaskDistribution.sample_test_tasks``: never the training pool)
are embedded from their support sets alone: a *bank* of reference tasks whose families are known,
and *queries*. A query is assigned the family of its nearest bank task (top-1 nearest neighbour);
the accuracy is the fraction named correctly (chance: 1 / number of families).

Embeddings, each standardised per coordinate with the bank's mean and std, compared by cosine:

- ``handcrafted``: ``features.handcrafted`` (no model);
- ``fisher``: ``fisher.log_fisher`` of the meta-learned init after ``adapt_steps`` SGD steps on
  the support set (Task2Vec's probe network, trained on the task; ``adapt_steps = 0``: the init).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import mlx.core as mx
import numpy as np

from reptile_fn.embed.features import handcrafted_batch
from reptile_fn.embed.fisher import fisher_leaves, log_fisher
from reptile_fn.embed.select import identification_accuracy, standardize
from reptile_fn.errors import ConfigError
from reptile_fn.inner import InnerLoop, adapt

CHUNK = 64  # tasks per vmapped Fisher call: bounds the (tasks, examples, parameters) per-example gradients


class Probe(NamedTuple):
    """The probe network of the Fisher embedding: a run's model and loss, and the inner loop that adapts
    it to a support set first (its ``lr`` and ``trainable``; the number of steps is ``adapt_steps``)."""

    apply: Callable
    loss: Callable
    loop: InnerLoop


def check_distribution(tasks) -> None:
    """Family identification needs a synthetic classification mixture of at least two families."""
    families = getattr(tasks, "families", None)
    if families is None or tasks.kind != "classification":
        raise ConfigError("family identification needs a run on synthetic classification families "
                          "(linear, xor, circles, spiral; Omniglot runs name the alphabet instead); train one with "
                          "`reptile-fn train`")
    if len(families) < 2:
        raise ConfigError(f"family identification needs at least two families, got {list(families)}; "
                          "pass two or more with --family")


def restrict_families(tasks, names) -> object:
    """``tasks`` with only the families ``names`` (all must fit the run's model: same kind and sizes)."""
    from reptile_fn.tasks.distribution import FAMILIES

    restricted = dataclasses.replace(tasks, families=tuple(names))  # validates the names
    for name in restricted.families:
        f = FAMILIES[name]
        if (f.kind, f.in_dim, f.out_dim) != (tasks.kind, tasks.in_dim, tasks.out_dim):
            raise ConfigError(f"family {name!r} ({f.kind}, in_dim={f.in_dim}, out_dim={f.out_dim}) does not fit this "
                              f"run's model ({tasks.kind}, in_dim={tasks.in_dim}, out_dim={tasks.out_dim}); "
                              f"pick from the run's families: {', '.join(tasks.families)}")
    return restricted


def sample_tasks(tasks, key: mx.array, n_tasks: int):
    """(family ids (n,) numpy, Episode): n fresh held-out tasks and one episode of each."""
    tasks_key, data_key = mx.random.split(key)
    held_out = tasks.sample_test_tasks(tasks_key, n_tasks)
    return np.array(held_out.family_ids), tasks.episodes(held_out, data_key)


def fisher_embeddings(probe: Probe, params, support_x: mx.array, support_y: mx.array, *,
                      adapt_steps: int = 0) -> mx.array:
    """``log_fisher`` of each support set (tasks, n, ...) -> (tasks, parameters), after ``adapt_steps``."""
    loop = probe.loop._replace(steps=adapt_steps)

    def one(x, y):
        p = adapt(loop, probe.apply, probe.loss, params, (x, y)).params if adapt_steps else params
        return log_fisher(fisher_leaves(probe.apply, probe.loss, p, x, y))

    embed = mx.vmap(one)
    out = []
    for i in range(0, support_x.shape[0], CHUNK):
        out.append(embed(support_x[i:i + CHUNK], support_y[i:i + CHUNK]))
        mx.eval(out[-1])
    return mx.concatenate(out)


def embed_support(probe: Probe, params, support_x: mx.array, support_y: mx.array, *, n_classes: int,
                  adapt_steps: int = 0) -> dict:
    """Both embeddings of a batch of support sets: ``{"handcrafted": (tasks, d), "fisher": (tasks, p)}``."""
    return {"handcrafted": handcrafted_batch(support_x, support_y, n_classes),
            "fisher": fisher_embeddings(probe, params, support_x, support_y, adapt_steps=adapt_steps)}


def family_identification(probe: Probe, tasks, params, *, k_shot: int, bank_tasks: int, query_tasks: int,
                          key: mx.array, adapt_steps: int = 0) -> dict:
    """Top-1 nearest-neighbour family identification of fresh tasks with k_shot examples per class.

    Returns ``{"accuracy": {name: float}, "embeddings": {name: (bank + query, d) numpy, standardised},
    "labels": (bank + query,) family ids, "is_query": (bank + query,) bool, "families", "k_shot",
    "bank_tasks", "query_tasks", "adapt_steps"}`` for ``name`` in handcrafted, fisher.
    """
    check_distribution(tasks)
    _check_counts(k_shot=k_shot, bank_tasks=bank_tasks, query_tasks=query_tasks, adapt_steps=adapt_steps)
    tasks = dataclasses.replace(tasks, k_shot=k_shot)
    bank_key, query_key = mx.random.split(key)
    bank_labels, bank = sample_tasks(tasks, bank_key, bank_tasks)
    query_labels, query = sample_tasks(tasks, query_key, query_tasks)
    kw = dict(n_classes=tasks.out_dim, adapt_steps=adapt_steps)
    return identify(embed_support(probe, params, bank.support_x, bank.support_y, **kw), bank_labels,
                    embed_support(probe, params, query.support_x, query.support_y, **kw), query_labels,
                    families=tuple(tasks.families), k_shot=k_shot, adapt_steps=adapt_steps)


def _check_counts(**counts: int) -> None:
    """A ConfigError unless every count is an integer >= 1 (``adapt_steps``: >= 0)."""
    for name, value in counts.items():
        low = 0 if name == "adapt_steps" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def identify(bank: dict, bank_labels: np.ndarray, query: dict, query_labels: np.ndarray, **info) -> dict:
    """Nearest-neighbour identification with each embedding ``{name: (tasks, d)}``, standardised by the bank."""
    groups = len(info.get("families", ()))
    if len(bank_labels) < groups:  # a family without a bank task can never be named: the accuracy would mislead
        raise ConfigError(f"{len(bank_labels)} bank tasks for {groups} families or alphabets: each needs bank tasks to be "
                          f"named; use at least {groups} (--tasks {5 * groups} gives about 5 each)")
    accuracy, embeddings = {}, {}
    for name in bank:
        b, q = standardize(bank[name], query[name])
        accuracy[name] = identification_accuracy(q, query_labels, b, bank_labels)
        embeddings[name] = np.concatenate([np.array(b), np.array(q)])
    n_bank, n_query = len(bank_labels), len(query_labels)
    return {"accuracy": accuracy, "embeddings": embeddings, "labels": np.concatenate([bank_labels, query_labels]),
            "is_query": np.arange(n_bank + n_query) >= n_bank, "bank_tasks": n_bank, "query_tasks": n_query, **info}


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows (centred; numpy SVD) -> (n, 2)."""
    centred = embeddings - embeddings.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T if vt.shape[0] >= 2 else np.pad(centred @ vt.T, ((0, 0), (0, 2 - vt.shape[0])))


def alphabet_identification(probe: Probe, params, tasks, *, k_shot: int, bank_tasks: int, query_tasks: int,
                            key: mx.array, adapt_steps: int = 0, n_way: int | None = None) -> dict:
    """Omniglot: name the alphabet of a fresh held-out episode whose characters all come from one alphabet.

    ``tasks``: a run's ``OmniglotTasks``; episodes are drawn from its held-out characters (``test_images``,
    grouped by ``test_alphabets``), so no training task used them: under the standard protocol they are
    characters of alphabets seen in training, under ``protocol: alphabets`` whole unseen alphabets. Each task
    picks an alphabet uniformly, then an ``n_way``-way (default ``tasks.n_way``; at most the model's head)
    ``k_shot``-shot episode of its characters; alphabets with fewer than ``n_way`` held-out characters are left
    out (``left_out``). Returns what
    ``family_identification`` returns, with the alphabets as ``families``.
    """
    from reptile_fn.episode import class_episode
    from reptile_fn.tasks import omniglot

    _check_counts(k_shot=k_shot, bank_tasks=bank_tasks, query_tasks=query_tasks, adapt_steps=adapt_steps)
    alphabets = getattr(tasks, "test_alphabets", ())
    if not alphabets:
        raise ConfigError("alphabet identification needs an Omniglot run whose held-out characters know their "
                          "alphabets (tasks from tasks.omniglot.make_omniglot)")
    n_way, drawings = n_way or tasks.n_way, tasks.test_images.shape[1]
    if not 2 <= n_way <= tasks.n_way:
        raise ConfigError(f"n_way = {n_way} classes per episode, but the run's head has {tasks.n_way}; use 2 to "
                          f"{tasks.n_way} (--way)")
    if k_shot + 1 > drawings:  # the episode sampler also draws one query drawing per class
        raise ConfigError(f"k_shot = {k_shot} needs {k_shot + 1} drawings per character, but the held-out characters "
                          f"have {drawings}; use at most {drawings - 1} shots (--shots)")
    names = tuple(sorted(set(alphabets)))
    rows = {n: np.flatnonzero(np.array([a == n for a in alphabets])) for n in names}
    left_out = tuple(n for n in names if len(rows[n]) < n_way)
    names = tuple(n for n in names if len(rows[n]) >= n_way)
    if len(names) < 2:
        raise ConfigError(f"alphabet identification needs two alphabets with at least n_way={n_way} held-out "
                          f"characters, and the run's {tasks.test_split!r} split has {len(names)} such alphabets; use "
                          f"fewer classes per episode (--way 5)")
    groups = [tasks.test_images[mx.array(rows[n])] for n in names]

    def sample(k, n):
        alphabet_key, episode_key = mx.random.split(k)
        labels = np.array(mx.random.randint(0, len(names), (n,), key=alphabet_key))
        keys = mx.random.split(episode_key, n)
        eps = [class_episode(groups[a], keys[i], n_way, k_shot, 1, decode=omniglot.decode) for i, a in enumerate(labels)]
        return labels, mx.stack([e.support_x for e in eps]), mx.stack([e.support_y for e in eps])

    bank_key, query_key = mx.random.split(key)
    bank_labels, bx, by = sample(bank_key, bank_tasks)
    query_labels, qx, qy = sample(query_key, query_tasks)
    kw = dict(n_classes=n_way, adapt_steps=adapt_steps)
    return identify(embed_support(probe, params, bx, by, **kw), bank_labels, embed_support(probe, params, qx, qy, **kw),
                    query_labels, families=names, k_shot=k_shot, adapt_steps=adapt_steps, left_out=left_out, n_way=n_way)
