"""Episodes and the Sampler protocol: what evaluation, embeddings, algorithms and the run layer
import, instead of any task family's module.

A sampler draws a batch of episodes from an explicit key, purely (``mx.vmap``- and
``mx.compile``-safe): ``sample_train(key, n)`` from the meta-training tasks, ``sample_test(key, n)``
from held-out ones. ``sample_class_episodes`` is the one N-way K-shot sampler over a class array,
used by every classification data set (Omniglot, text, a user's images or CSV).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Protocol

import mlx.core as mx

from reptile_fn.errors import ConfigError


class Episode(NamedTuple):
    """One few-shot task (or a batch of them, stacked on a leading task axis).

    Classification: ``support_x`` is (k_shot * n_way, *in_dim) with integer labels in ``support_y``;
    ``query_x`` is (query_size * n_way, *in_dim). Regression: (k_shot, d) support points and
    (query_size, d) query points with (…, out_dim) float targets.
    """

    support_x: mx.array
    support_y: mx.array
    query_x: mx.array
    query_y: mx.array


class Sampler(Protocol):
    """A task distribution: ``kind`` ("classification" or "regression"), input and output sizes, and
    ``sample_train`` / ``sample_test`` (key, n_tasks) -> Episode stacked on a task axis."""

    kind: str

    @property
    def in_dim(self): ...

    @property
    def out_dim(self) -> int: ...

    def sample_train(self, key: mx.array, n_tasks: int) -> Episode: ...

    def sample_test(self, key: mx.array, n_tasks: int) -> Episode: ...


def sample_indices(key: mx.array, counts: mx.array | int, n_max: int, n_way: int, n_per_class: int,
                   groups: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """One episode's classes (n_way,), distinct, in random order, and example indices (n_way, n_per_class),
    distinct within each class and below its count.

    ``counts``: examples per class (n_classes,), or one int when every class has all ``n_max``.
    ``groups``: int32 (n_classes,) group ids 0..G − 1, each with at least n_way classes: the episode's classes
    all come from one group, drawn uniformly (e.g. one CLINC150 domain, fine-grained like Banking77).
    """
    class_key, order_key, example_key = mx.random.split(key, 3)
    n_classes = counts if isinstance(counts, int) else counts.shape[0]
    # The n_way smallest of n_classes iid uniforms are a uniform random subset; argpartition finds
    # them in O(n_classes), several times faster than a full argsort. argpartition leaves their order
    # unspecified (it may differ between backends), so they are sorted, then shuffled with their own
    # key: labels carry no trace of class indices and the episode depends on the key alone.
    if groups is None:
        u = mx.random.uniform(shape=(n_classes,), key=class_key)
    else:  # classes outside the drawn group sort last (2 > any uniform)
        group_key, class_key = mx.random.split(class_key)
        group = mx.random.randint(0, mx.max(groups) + 1, key=group_key)
        u = mx.where(groups == group, mx.random.uniform(shape=(n_classes,), key=class_key), 2.0)
    picked = mx.sort(mx.argpartition(u, n_way - 1)[:n_way])
    classes = picked[mx.argsort(mx.random.uniform(shape=(n_way,), key=order_key))]
    u = mx.random.uniform(shape=(n_way, n_max), key=example_key)
    if not isinstance(counts, int):  # slots past a class's count sort last (2 > any uniform)
        u = mx.where(mx.arange(n_max)[None, :] < counts[classes][:, None], u, 2.0)
    return classes, mx.argsort(u, axis=-1)[:, :n_per_class]


def class_episode(x: mx.array, key: mx.array, n_way: int, k_shot: int, query_size: int, *,
                  counts: mx.array | None = None, offsets: mx.array | None = None, n_max: int | None = None,
                  decode: Callable[[mx.array], mx.array] | None = None, groups: mx.array | None = None) -> Episode:
    """One N-way K-shot episode from ``x`` (n_classes, n_max, ...): row c holds class c's examples.

    Support: k_shot examples of each of n_way distinct classes, class-major, labels 0..n_way − 1 (the
    i-th sampled class is label i); query: query_size other examples of the same classes. ``counts``:
    real examples per class (rows past it are padding); ``decode`` maps the gathered examples to
    model inputs (e.g. uint8 pixels to floats).

    Flat layout (classes of very different sizes, no padding): ``x`` is (n_examples, ...) with class c at
    rows ``offsets[c] .. offsets[c] + counts[c]``, and ``n_max`` (a Python int) is the largest count.
    ``groups``: the classes of an episode come from one group (``sample_indices``).
    """
    if offsets is None:
        classes, examples = sample_indices(key, x.shape[0] if counts is None else counts, x.shape[1], n_way,
                                           k_shot + query_size, groups)
        xs = x[classes[:, None], examples]  # (n_way, k + q, ...)
    else:
        classes, examples = sample_indices(key, counts, n_max, n_way, k_shot + query_size, groups)
        xs = x[offsets[classes][:, None] + examples]
    if decode is not None:
        xs = decode(xs)
    tail = xs.shape[2:]
    labels = mx.arange(n_way, dtype=mx.int32)
    return Episode(xs[:, :k_shot].reshape(n_way * k_shot, *tail), mx.repeat(labels, k_shot),
                   xs[:, k_shot:].reshape(n_way * query_size, *tail), mx.repeat(labels, query_size))


def sample_class_episodes(x: mx.array, key: mx.array, n_tasks: int, *, n_way: int, k_shot: int, query_size: int,
                          counts: mx.array | None = None, offsets: mx.array | None = None, n_max: int | None = None,
                          decode: Callable | None = None, groups: mx.array | None = None) -> Episode:
    """n_tasks episodes stacked on a leading task axis; episode i uses ``split(key, n_tasks)[i]``
    (arguments as ``class_episode``)."""
    keys = mx.random.split(key, n_tasks)
    return mx.vmap(lambda k: class_episode(x, k, n_way, k_shot, query_size, counts=counts, offsets=offsets, n_max=n_max,
                                           decode=decode, groups=groups))(keys)


def check_classes(what: str, n_classes: int, fewest: int, *, n_way: int, k_shot: int, query_size: int,
                  unit: str = "examples", classes: str = "classes") -> None:
    """A ConfigError unless a split of ``n_classes`` classes (the smallest with ``fewest`` examples)
    can give N-way episodes of k_shot + query_size distinct examples per class."""
    def count(n: int, plural: str) -> str:  # "1 image", "3 images", "1 class"
        return f"{n} {plural if n != 1 else plural[:-2] if plural.endswith('sses') else plural.rstrip('s')}"

    if k_shot + query_size > fewest:
        fits = f" (e.g. --set tasks.query_size={fewest - k_shot})" if fewest > k_shot else ""
        raise ConfigError(f"k_shot + query_size = {k_shot + query_size} but {what} has one of its {classes} with only "
                          f"{count(fewest, unit)}; support and query must be distinct {unit}, so lower tasks.k_shot or "
                          f"tasks.query_size{fits}, or give that class more {unit}")
    if n_way > n_classes:
        fits = f" (--set tasks.n_way={n_classes})" if n_classes >= 2 else ""
        lower = f"lower tasks.n_way{fits}, or " if n_classes >= 2 else ""  # an episode needs 2 classes at least
        raise ConfigError(f"n_way = {n_way} but {what} has only {count(n_classes, classes)}; {lower}use data with more "
                          f"{classes}")
