"""Few-shot intent classification: CLINC150 and Banking77 episodes, sampled on the device.

Data (``<data_dir>/clinc150/``, ``<data_dir>/banking77/``; ``data_dir`` else ``$REPTILE_FN_DATA``).
CLINC150 (Larson et al. 2019): ``data_full.json`` maps "train"/"val"/"test" (and "oos_*") to
lists of ``[text, intent]``; ``domains.json`` maps 10 domains to 15 intents each. An intent's
sentences are its train, val and test sentences together (150 each); out-of-scope ("oos") is not
a class. Banking77 (Casanueva et al. 2020): ``train.csv`` and ``test.csv`` with header
``text,category``; an intent's sentences are both files' (75..227 each).

Splits (class-disjoint). CLINC150 ``by="domain"``: the domains, ordered by SHA-256 of
``"<seed>:<domain>"``, give "test" 2, "val" 2 and "train" 6 domains (their intents: 30/30/90);
``by="intent"``: the 150 intents in the same seeded order, 30/30/90. A split depends on the seed
and the names only. Banking77 is one cross-domain meta-test set ("all": its 77 intents).

Episodes. Every sentence is tokenized once (``reptile_fn.text``; one length L for the whole
task object: the longest sentence, at most ``max_length`` tokens) and a split lives on the device
as ``x`` int32 (n_classes, n_max, 2, L), row c holding class c's sentences as (ids, mask) and zeros
after ``counts[c]``. An N-way K-shot episode picks N distinct classes and K + Q distinct sentences
of each with pure MLX ops from a key, so sampling runs under ``mx.vmap`` and inside ``mx.compile``.
Episode inputs are int32 (…, 2, L), the ``x`` of ``text.text_classifier``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple, Sequence

import mlx.core as mx
import numpy as np

from reptile_fn import datasets
from reptile_fn.episode import Episode, check_classes, sample_class_episodes
from reptile_fn.errors import ConfigError, DataError, check_choice, check_int
from reptile_fn.tasks.splits import group_split

DATASETS = ("clinc150", "banking77")
SPLITS = {"clinc150": ("train", "val", "test", "all"), "banking77": ("all",)}
SPLIT_BY = ("domain", "intent")
MAX_LENGTH = 64
"""Default token limit per sentence (the longest CLINC150 sentence is shorter; a few Banking77 ones are cut)."""
CLINC_SOURCE = "github.com/clinc/oos-eval (data/data_full.json, data/domains.json)"
BANKING_SOURCE = "github.com/PolyAI-LDN/task-specific-datasets (banking_data/train.csv, test.csv)"


class TextClasses(NamedTuple):
    """Sentences grouped by intent: ``texts[i]`` are the sentences of intent ``names[i]``, in ``groups[i]``.

    A group is the intent's CLINC150 domain, or "banking" for Banking77.
    """

    names: tuple[str, ...]
    texts: tuple[tuple[str, ...], ...]
    groups: tuple[str, ...]

    def subset(self, index: Sequence[int] | np.ndarray) -> TextClasses:
        return TextClasses(*(tuple(field[i] for i in index) for field in self))


# --- loading ------------------------------------------------------------------------------------

def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """``<data root>/<name>``: the root is ``data_dir``, else ``$REPTILE_FN_DATA``."""
    check_choice("dataset", name, DATASETS)
    if data_dir is None and not os.environ.get(datasets.DATA_ENV):
        raise DataError(f"no data directory given: pass data_dir=DIR (--data-dir DIR) or set {datasets.DATA_ENV}=DIR, "
                        f"where DIR/{name}/ holds the {name} files (CLINC150 from {CLINC_SOURCE}, Banking77 "
                        f"from {BANKING_SOURCE})")
    return datasets.data_dir(data_dir) / name


def load_clinc150(data_dir: str | os.PathLike | None = None) -> TextClasses:
    """CLINC150's 150 in-scope intents, sorted by name, each with its train + val + test sentences."""
    folder = dataset_dir("clinc150", data_dir)
    data, domains = _read_json(folder / "data_full.json"), _read_json(folder / "domains.json")
    if not isinstance(data, dict) or not isinstance(domains, dict):
        raise _layout(folder, "data_full.json and domains.json must each hold a JSON object")
    texts: dict[str, list[str]] = {}
    for part in ("train", "val", "test"):
        rows = data.get(part)
        if not isinstance(rows, list):
            raise _layout(folder, f"data_full.json has no list {part!r} (keys: {', '.join(map(str, data))})")
        for row in rows:
            if not (isinstance(row, list) and len(row) == 2 and all(isinstance(s, str) for s in row)):
                raise _layout(folder, f"data_full.json[{part!r}] holds {row!r}, expected [text, intent]")
            texts.setdefault(row[1], []).append(row[0])
    domain_of = {}
    for domain, intents in domains.items():
        if not isinstance(intents, list):
            raise _layout(folder, f"domains.json[{domain!r}] is not a list of intents")
        domain_of.update({intent: domain for intent in intents})
    if set(domain_of) != set(texts):
        odd = sorted(set(domain_of) ^ set(texts))[:5]
        raise _layout(folder, f"the intents of domains.json and data_full.json differ (e.g. {', '.join(odd)})")
    names = tuple(sorted(texts))
    return TextClasses(names, tuple(tuple(texts[n]) for n in names), tuple(domain_of[n] for n in names))


def load_banking77(data_dir: str | os.PathLike | None = None) -> TextClasses:
    """Banking77's 77 intents, sorted by name, each with its train + test sentences."""
    folder = dataset_dir("banking77", data_dir)
    texts: dict[str, list[str]] = {}
    for file in (folder / "train.csv", folder / "test.csv"):
        try:
            with open(file, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header != ["text", "category"]:
                    raise _layout(folder, f"{file.name} starts with {header!r}, expected the header text,category")
                for line, row in enumerate(reader, start=2):
                    if len(row) != 2:
                        raise _layout(folder, f"{file.name} line {line} has {len(row)} fields, expected 2 (text,category)")
                    texts.setdefault(row[1], []).append(row[0])
        except FileNotFoundError:
            raise _missing(file, BANKING_SOURCE) from None
        except PermissionError:
            raise  # the CLI says so; fetching the file again would not help
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"cannot read {file} ({type(e).__name__}: {e}); fetch it again from {BANKING_SOURCE}") from e
    names = tuple(sorted(texts))
    return TextClasses(names, tuple(tuple(texts[n]) for n in names), ("banking",) * len(names))


def _read_json(file: Path):
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise _missing(file, CLINC_SOURCE) from None
    except PermissionError:
        raise  # the CLI says so; fetching the file again would not help
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read {file} ({type(e).__name__}: {e}): it is corrupt or truncated; "
                        f"fetch it again from {CLINC_SOURCE}") from e


def _missing(file: Path, source: str) -> DataError:
    return DataError(f"{file} not found; put the files from {source} in {file.parent}, "
                     "or point data_dir / $REPTILE_FN_DATA at the folder that holds it")


def _layout(folder: Path, detail: str) -> DataError:
    return DataError(f"{folder} does not have the expected layout: {detail}; use the files described in {folder.name}'s "
                     "SOURCE (CLINC150: " + CLINC_SOURCE + "; Banking77: " + BANKING_SOURCE + ")")


# --- splits -------------------------------------------------------------------------------------

def split_classes(classes: TextClasses, *, seed: int = 0, by: str = "domain") -> dict[str, np.ndarray]:
    """Class indices of "test", "val" and "train": round(n/5), round(n/5) and the rest of the
    seed-ordered domains (``by="domain"``: 2/2/6 of CLINC150's 10) or intents (``by="intent"``)."""
    check_choice("split_by", by, SPLIT_BY)
    keys = classes.groups if by == "domain" else classes.names
    return group_split(list(keys), divisor=5, seed=seed, what=by)


def load_split(spec: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0, by: str = "domain") -> TextClasses:
    """The classes of ``"<dataset>:<split>"``: "clinc150:train|val|test|all" or "banking77" ("banking77:all")."""
    name, _, split = spec.partition(":")
    check_choice("dataset", name, DATASETS)
    split = split or "all"
    check_choice(f"the split of {name}", split, SPLITS[name])
    classes = load_clinc150(data_dir) if name == "clinc150" else load_banking77(data_dir)
    return classes if split == "all" else classes.subset(split_classes(classes, seed=seed, by=by)[split])


# --- tokens on the device -----------------------------------------------------------------------

def tokenize_classes(tokenizer, classes: TextClasses, max_length: int = MAX_LENGTH,
                     length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, counts)``: x int32 (n_classes, n_max, 2, L) of (ids, mask) rows, counts int32 (n_classes,).

    L is ``length`` if given (sentences padded or cut to it), else the longest sentence (at most
    ``max_length`` tokens). Rows past ``counts[c]`` are zeros.
    """
    from reptile_fn.text.encoder import tokenize  # needs the text extra; the loaders above do not

    flat = [s for texts in classes.texts for s in texts]
    ids, mask = tokenize(tokenizer, flat, max_length if length is None else length)
    length = ids.shape[1] if length is None else length
    pad = length - ids.shape[1]
    ids, mask = np.pad(ids, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad)))
    counts = np.array([len(t) for t in classes.texts], dtype=np.int32)
    x = np.zeros((len(counts), int(counts.max()), 2, length), np.int32)
    start = np.concatenate([[0], np.cumsum(counts)])
    for c, n in enumerate(counts):
        x[c, :n, 0], x[c, :n, 1] = ids[start[c]:start[c] + n], mask[start[c]:start[c] + n]
    return x, counts


def token_length(tokenizer, *sets: TextClasses, max_length: int = MAX_LENGTH) -> int:
    """The longest sentence of all ``sets`` in tokens, at most ``max_length``."""
    from reptile_fn.text.encoder import tokenize

    return max(tokenize(tokenizer, [s for texts in c.texts for s in texts], max_length)[0].shape[1] for c in sets)


# --- episodes -----------------------------------------------------------------------------------

def sample_episodes(x: mx.array, counts: mx.array, key: mx.array, n_tasks: int, *, n_way: int, k_shot: int,
                    query_size: int, groups: mx.array | None = None) -> Episode:
    """n_tasks N-way K-shot episodes from x int32 (n_classes, n_max, 2, L) with ``counts`` sentences per class,
    stacked on a task axis (``episode.sample_class_episodes``); episode i uses ``split(key, n_tasks)[i]``.

    Any per-sentence trailing shape works: with cached embeddings x (n_classes, n_max, H) the same key
    gives the same episode, embedded. ``groups``: int32 (n_classes,) group ids; each episode's classes come from one.
    """
    return sample_class_episodes(x, key, n_tasks, n_way=n_way, k_shot=k_shot, query_size=query_size, counts=counts,
                                 groups=groups)


@dataclass(frozen=True, eq=False)
class TextTasks:
    """N-way K-shot intent-classification episodes: the TaskDistribution interface of the training loop.

    ``train_x`` / ``test_x``: int32 (n_classes, n_max, 2, L) on the device with ``train_counts`` /
    ``test_counts`` sentences per class (``tokenize_classes``); ``train_names`` / ``test_names`` the
    intents. ``sample_train`` draws from the first, ``sample_test`` from the second; both are pure
    in their key, vmap- and compile-safe. Episode inputs are int32 (n, 2, L): ``in_dim`` = (2, L).
    ``train_groups``: int32 (n_train_classes,) group ids 0..G − 1, or None; when set, every meta-training
    episode draws its classes from one group (``tasks.train_within_group``: one CLINC150 domain per task).
    ``test_groups`` likewise for the held-out episodes (``tasks.test_within_group``: fine-grained episodes, all
    intents of one domain, as a single-domain target such as Banking77 gives).
    """

    train_x: mx.array
    train_counts: mx.array
    test_x: mx.array
    test_counts: mx.array
    n_way: int
    k_shot: int
    query_size: int
    train_names: tuple[str, ...] = ()
    test_names: tuple[str, ...] = ()
    train_split: str = "clinc150:train"
    test_split: str = "clinc150:test"
    train_groups: mx.array | None = None
    test_groups: mx.array | None = None

    kind: ClassVar[str] = "classification"

    def __post_init__(self) -> None:
        check_int("n_way", self.n_way, 1, "classes per episode")
        check_int("k_shot", self.k_shot, 1, "support sentences per class")
        check_int("query_size", self.query_size, 1, "query sentences per class")
        for name in ("n_way", "k_shot", "query_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.train_x.shape[-1] != self.test_x.shape[-1]:
            raise ConfigError(f"train and test sentences must have one token length, got {self.train_x.shape[-1]} "
                              f"and {self.test_x.shape[-1]}; build both with tokenize_classes(..., length=L)")
        for prefix, split in (("train", self.train_split), ("test", self.test_split)):
            x, counts = getattr(self, f"{prefix}_x"), getattr(self, f"{prefix}_counts")
            if x.ndim != 4 or x.shape[2] != 2 or counts.shape != (x.shape[0],):
                raise ConfigError(f"{prefix}_x must be (n_classes, n_max, 2, L) with {prefix}_counts (n_classes,), got "
                                  f"{tuple(x.shape)} and {tuple(counts.shape)}")
            check_classes(f"the {split!r} split", x.shape[0], int(counts.min().item()), n_way=self.n_way,
                          k_shot=self.k_shot, query_size=self.query_size, unit="sentences", classes="intents")
        for prefix, split, what in (("train", self.train_split, "training task"),
                                    ("test", self.test_split, "held-out episode")):
            groups, counts = getattr(self, f"{prefix}_groups"), getattr(self, f"{prefix}_counts")
            if groups is None:
                continue
            sizes = np.bincount(np.array(groups))
            if groups.shape != counts.shape or int(sizes.min()) < self.n_way:
                raise ConfigError(f"tasks.{prefix}_within_group draws each {what}'s {self.n_way} intents from one "
                                  f"group, but the {split!r} split has a group of {int(sizes.min())} "
                                  "intents; lower n_way, set tasks.group_column (CSV) to groups that large, or set "
                                  f"tasks.{prefix}_within_group: false")

    @property
    def in_dim(self) -> tuple[int, int]:
        """The shape of one input: (2, L), token ids and mask."""
        return (2, int(self.train_x.shape[-1]))

    @property
    def out_dim(self) -> int:
        """The number of classes per episode (n_way)."""
        return self.n_way

    def sample_train(self, key: mx.array, n_tasks: int) -> Episode:
        """n_tasks meta-training episodes (from ``train_x``)."""
        return sample_episodes(self.train_x, self.train_counts, key, n_tasks, n_way=self.n_way, k_shot=self.k_shot,
                               query_size=self.query_size, groups=self.train_groups)

    def sample_test(self, key: mx.array, n_tasks: int) -> Episode:
        """n_tasks held-out episodes (from ``test_x``: the split chosen at construction)."""
        return sample_episodes(self.test_x, self.test_counts, key, n_tasks, n_way=self.n_way, k_shot=self.k_shot,
                               query_size=self.query_size, groups=self.test_groups)


def make_text_tasks(data_dir: str | os.PathLike | None = None, *, n_way: int = 5, k_shot: int = 5,
                    query_size: int = 5, train_split: str = "clinc150:train", test_split: str = "clinc150:test",
                    seed: int = 0, split_by: str = "domain", max_length: int = MAX_LENGTH, tokenizer=None,
                    encoder: str | os.PathLike | None = None, train_within_group: bool = False,
                    test_within_group: bool = False) -> TextTasks:
    """An intent-classification episode sampler: ``train_split`` for ``sample_train``, ``test_split`` for ``sample_test``.

    Splits are ``"clinc150:train|val|test|all"`` or ``"banking77"`` (see the module docstring);
    ``seed`` and ``split_by`` choose CLINC150's class split (not the sampling key). Sentences are
    tokenized with ``tokenizer``, else the tokenizer of the encoder folder ``encoder`` (default:
    all-MiniLM-L6-v2, the text extra), to one length: the longest, at most ``max_length`` tokens.
    ``train_within_group`` / ``test_within_group``: every meta-training / held-out episode's intents come from one
    domain.
    """
    train = load_split(train_split, data_dir, seed=seed, by=split_by)
    test = load_split(test_split, data_dir, seed=seed, by=split_by)
    return tasks_from_classes(train, test, n_way=n_way, k_shot=k_shot, query_size=query_size, train_split=train_split,
                              test_split=test_split, max_length=max_length, tokenizer=tokenizer, encoder=encoder,
                              train_within_group=train_within_group, test_within_group=test_within_group)


def tasks_from_classes(train: TextClasses, test: TextClasses, *, n_way: int = 5, k_shot: int = 5, query_size: int = 5,
                       train_split: str, test_split: str, max_length: int = MAX_LENGTH, tokenizer=None,
                       encoder: str | os.PathLike | None = None, train_within_group: bool = False,
                       test_within_group: bool = False) -> TextTasks:
    """A ``TextTasks`` from any two sets of classes (a CSV's, a loader's): the steps of ``make_text_tasks``
    after loading. Both are tokenized with ``tokenizer`` (else the encoder folder's, default
    all-MiniLM-L6-v2) to one length, the longest sentence of either, at most ``max_length`` tokens;
    ``train_split`` / ``test_split`` are the names the sampler reports (e.g. "csv:train"); ``train_within_group``:
    every meta-training episode's classes come from one of ``train.groups``; ``test_within_group``: every held-out
    episode's from one of ``test.groups``."""
    if tokenizer is None:
        from reptile_fn.text.encoder import load_tokenizer

        tokenizer = load_tokenizer(encoder)
    length = token_length(tokenizer, train, test, max_length=max_length)
    (train_x, train_counts), (test_x, test_counts) = (tokenize_classes(tokenizer, c, length=length) for c in (train, test))
    arrays = [mx.array(a) for a in (train_x, train_counts, test_x, test_counts)]
    mx.eval(*arrays)
    return TextTasks(*arrays, n_way, k_shot, query_size, train.names, test.names, train_split, test_split,
                     _group_ids(train) if train_within_group else None, _group_ids(test) if test_within_group else None)


def _group_ids(classes: TextClasses) -> mx.array:
    """int32 (n_classes,) ids of ``classes.groups``, numbered in order of first appearance."""
    ids = {g: i for i, g in enumerate(dict.fromkeys(classes.groups))}
    return mx.array([ids[g] for g in classes.groups], dtype=mx.int32)
