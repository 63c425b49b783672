"""A researcher's own labelled sentences as few-shot intent-classification tasks (``tasks.dataset: csv``).

The file: UTF-8 CSV (a BOM is fine) whose first line names the columns; each further line is one
sentence (``text_column``) and its label (``label_column``), optionally the label's group
(``group_column``: a domain, held out together) and split (``split_column``: train, val or test).
A label's sentences are its rows in file order; labels are sorted by name, as the built-in loaders
sort intents, so CLINC150 written as CSV gives the very episodes of ``tasks.text``.

Splits (class-disjoint): the split column's, else a seeded split of the groups by fraction
(``splits.fraction_split``: "test" and "val" get ``test`` and ``val`` of the groups, whole groups
together; without a group column every label is its own group). ``test_path``: a second CSV whose
labels are the "test" split (the main file is then split into "train" and "val" only). "all" is
every label of the main file (scoring a run on a CSV it never trained on).

Tokens, episodes and the sampler are those of ``tasks.text`` (``TextClasses``, ``tasks_from_classes``,
``TextTasks``): nothing here samples.
"""

from __future__ import annotations

import os
from pathlib import Path

from reptile_fn.errors import ConfigError, DataError, check_choice, has_control
from reptile_fn.tasks.csv_file import MAX_BYTES, MAX_FIELD, _existing, _rows  # noqa: F401  (MAX_*: the readers' limits)
from reptile_fn.tasks.splits import fraction_split
from reptile_fn.tasks.text import MAX_LENGTH, TextClasses, TextTasks, tasks_from_classes

import numpy as np

SPLITS = ("train", "val", "test")
TRAIN_SPLITS = ("train", "all")
TEST_SPLITS = ("test", "val", "all")
"""The longest field accepted, in characters: longer ones are a broken quote or not a sentence."""
KEYS = {"text": "tasks.text_column", "label": "tasks.label_column", "group": "tasks.group_column",
        "split": "tasks.split_column"}
"""The config key that names each column (for the messages)."""


# --- reading ------------------------------------------------------------------------------------

def load_csv(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
             group_column: str | None = None, split_column: str | None = None
             ) -> tuple[TextClasses, dict[str, np.ndarray] | None]:
    """The labels of a CSV file as ``TextClasses`` (sorted by label; sentences in file order; ``groups``
    the group column's value of each label, else the label) and, with ``split_column``, the class
    indices of "train", "val" and "test" (an empty array for a split the column never names).

    Labels, groups and split values lose surrounding whitespace; sentences are kept as written. Any
    problem with the file is one ``DataError`` naming it (and the line) and what to do.
    """
    file = _existing(path)
    columns = {"text": text_column, "label": label_column, "group": group_column, "split": split_column}
    named = [c for c in columns.values() if c is not None]
    if len(set(named)) < len(named):
        raise ConfigError(f"the text, label, group and split columns must be different columns, got {named}")
    rows = _rows(file)
    header_line, header = next(rows, (0, None))
    if header is None:
        raise DataError(f"{file} is empty; it needs a header line naming the columns ({text_column},{label_column}) "
                        "and one line per sentence")
    index = _columns(file, header_line, header, columns)
    texts: dict[str, list[str]] = {}
    seen: tuple[list, list, list] = ([], [], [])  # every (sentence, label, line), for the warning of twins
    group_of: dict[str, tuple[str, int]] = {}
    split_of: dict[str, tuple[str, int]] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{file} line {line} has {len(row)} fields but the header has {len(header)}; quote a field "
                            'that contains a comma ("like, this") and give every line the same columns')
        label, text = _name(file, line, row[index["label"]], label_column), row[index["text"]]
        if not label or not text.strip():
            what, column = ("label", label_column) if not label else ("text", text_column)
            raise DataError(f"{file} line {line} has an empty {what} (column {column!r}); every line needs a sentence "
                            "and its label: fill it in or delete the line")
        texts.setdefault(label, []).append(text)
        for column, value in zip(seen, (text, label, line)):
            column.append(value)
        if group_column is not None:
            _agree(file, group_of, label, _value(file, line, row[index["group"]], group_column), line, "group",
                   group_column)
        if split_column is not None:
            value = row[index["split"]].strip()
            if value not in SPLITS:
                raise DataError(f"{file} line {line} has split {value!r} in column {split_column!r}; it must be one "
                                f"of {', '.join(SPLITS)}")
            _agree(file, split_of, label, value, line, "split", split_column)
    if len(texts) < 2:
        found = f"only the label {next(iter(texts))!r}" if texts else "no sentences below its header"
        raise DataError(f"{file} has {found}; few-shot classification needs sentences of at least 2 labels (n_way of "
                        "them per episode): add lines of other labels")
    _warn_of_twins(file, *seen)
    names = tuple(sorted(texts))
    groups = tuple(group_of[n][0] for n in names) if group_column is not None else names
    classes = TextClasses(names, tuple(tuple(texts[n]) for n in names), groups)
    if split_column is None:
        return classes, None
    return classes, {s: np.array([i for i, n in enumerate(names) if split_of[n][0] == s], dtype=np.int64)
                     for s in SPLITS}


def read_texts(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
               labels: str = "required") -> tuple[list[str], list[str] | None, list[int]]:
    """``(texts, labels, lines)`` of every row of a CSV, in file order: what ``reptile-fn adapt`` reads.

    ``labels``: "required" (a support set), or "optional" (items to label: the label column is read when the
    header has it, else ``labels`` is None). Errors as ``load_csv``'s.
    """
    file = _existing(path)
    rows = _rows(file)
    header_line, header = next(rows, (0, None))
    if header is None:
        raise DataError(f"{file} is empty; it needs a header line naming its columns ({text_column}"
                        f"{',' + label_column if labels == 'required' else ''}) and one line per sentence")
    labelled = labels == "required" or label_column in [h.strip() for h in header]
    index = _columns(file, header_line, header, {"text": text_column, "label": label_column if labelled else None},
                     settable=False)
    texts, names, lines = [], [], []
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{file} line {line} has {len(row)} fields but the header has {len(header)}; quote a field "
                            'that contains a comma ("like, this") and give every line the same columns')
        if not row[index["text"]].strip() or (labelled and not row[index["label"]].strip()):
            what, column = ("text", text_column) if not row[index["text"]].strip() else ("label", label_column)
            raise DataError(f"{file} line {line} has an empty {what} (column {column!r}); fill it in or delete the line")
        texts.append(row[index["text"]])
        names.append(_name(file, line, row[index["label"]], label_column) if labelled else None)
        lines.append(line)
    if not texts:
        raise DataError(f"{file} has no sentences below its header; add one line per sentence")
    if labelled:
        _warn_of_twins(file, texts, names, lines)
    return texts, (names if labelled else None), lines


def _warn_of_twins(file: Path, texts: list[str], names: list[str], lines: list[int]) -> None:
    """A warning line where one sentence carries two labels: it cannot be classified both ways."""
    from reptile_fn import progress

    first: dict[str, tuple[str, int]] = {}
    twins = []
    for text, name, line in zip(texts, names, lines):
        label, at = first.setdefault(text.strip(), (name, line))
        if label != name:
            twins.append((at, line, label, name))
    if twins:
        at, line, a, b = twins[0]
        progress.note(f"warning: {len(twins)} sentence(s) of {file} carry two labels (e.g. lines {at} and {line}: "
                      f"{a!r} and {b!r}); a sentence under two labels cannot be classified; keep one")


def _columns(file: Path, line: int, header: list[str], columns: dict[str, str | None], *,
             settable: bool = True) -> dict[str, int]:
    """The index of each named column in the header; a DataError if one is absent or named twice. ``settable``:
    the caller's config keys can name other columns (training); else the file must use the run's names (adapt)."""
    names = [h.strip() for h in header]
    missing = [k for k, c in columns.items() if c is not None and c not in names]
    if missing:
        shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
        wanted = " and ".join(f"{k} column {columns[k]!r}" for k in missing)
        sep = next((name for s, name in (("\t", "tabs"), (";", "semicolons"), ("|", "'|'")) if len(names) == 1
                    and s in names[0]), None)
        fix = (f"it looks separated by {sep}: save it with commas (CSV)" if sep else
               f"set {' / '.join(KEYS[k] for k in missing)} to the columns that hold them" if settable else
               f"name them {' and '.join(repr(columns[k]) for k in missing)} in the header (this run's "
               f"{' / '.join(KEYS[k] for k in missing)})")
        raise DataError(f"{file} has no {wanted}: its header (line {line}) has the columns {shown}; {fix}, or if the "
                        f"file has no header, add a first line naming its columns, e.g. "
                        f"{','.join(c for c in (columns['text'], columns['label']) if c is not None)}")
    twice = [c for k, c in columns.items() if c is not None and names.count(c) > 1]
    if twice:
        raise DataError(f"{file}: its header (line {line}) names the column {twice[0]!r} more than once; rename one")
    return {k: names.index(c) for k, c in columns.items() if c is not None}


def _value(file: Path, line: int, value: str, column: str) -> str:
    value = _name(file, line, value, column)
    if not value:
        raise DataError(f"{file} line {line} has an empty group (column {column!r}); fill it in")
    return value


def _name(file: Path, line: int, value: str, column: str) -> str:
    """A label or group name, stripped; one with a control character is refused: names are printed and written
    (an escape sequence would reach the terminal, a newline would split adapt's summary and predictions.csv)."""
    value = value.strip()
    if has_control(value):
        raise DataError(f"{file} line {line} has a control character (a newline?) in column {column!r}, "
                        f"{ascii(value)[:80]}; remove it from the name")
    return value


def _agree(file: Path, seen: dict[str, tuple[str, int]], label: str, value: str, line: int, what: str,
           column: str) -> None:
    """A DataError unless every row of ``label`` has the same ``what`` (group or split)."""
    first, first_line = seen.setdefault(label, (value, line))
    if first != value:
        raise DataError(f"{file} line {line} puts label {label!r} in {what} {value!r} but line {first_line} puts it in "
                        f"{what} {first!r}; each label has one {what} (column {column!r}): make its lines agree")


# --- splits -------------------------------------------------------------------------------------

def csv_split(classes: TextClasses, splits_from_column: dict[str, np.ndarray] | None, *, seed: int = 0,
              val: float = 0.2, test: float = 0.2) -> dict[str, np.ndarray]:
    """Class indices of "train", "val", "test" and "all": the split column's (``load_csv``'s second
    value) when given, else the groups held out by fraction (``splits.fraction_split``: whole groups
    together, depending on ``seed`` and the group names only)."""
    _check_fractions(val=val, test=test)
    if splits_from_column is not None:
        split = {s: np.asarray(splits_from_column.get(s, ()), dtype=np.int64) for s in SPLITS}
    else:
        what = "label" if classes.groups == classes.names else "group"
        split = fraction_split(list(classes.groups), val=val, test=test, seed=seed, what=what)
    return {**split, "all": np.arange(len(classes.names), dtype=np.int64)}


def _check_fractions(**fractions: float) -> None:
    for name, f in fractions.items():
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ConfigError(f"{name} (tasks.{name}_fraction) must be a fraction of the groups in [0, 1), got {f!r}")


def _train_val(file: Path, classes: TextClasses, column: dict[str, np.ndarray] | None, *, seed: int,
               val: float) -> dict[str, np.ndarray]:
    """Class indices of "train", "val" and "all" when another file is the test split."""
    _check_fractions(val=val)
    everything = np.arange(len(classes.names), dtype=np.int64)
    if column is not None:
        if len(column["test"]):
            raise DataError(f"{file}: its split column puts {classes.names[column['test'][0]]!r} (and "
                            f"{len(column['test']) - 1} more) in test, but tasks.test_path names the test file; mark "
                            "them train or val, or drop tasks.test_path")
        return {"train": column["train"], "val": column["val"], "all": everything}
    if val == 0:
        return {"train": everything, "val": everything[:0], "all": everything}
    what = "label" if classes.groups == classes.names else "group"
    held = fraction_split(list(classes.groups), val=0, test=val, seed=seed, what=what)  # its "test" is our val
    return {"train": held["train"], "val": held["test"], "all": everything}


# --- the sampler --------------------------------------------------------------------------------

def make_csv_tasks(path: str | os.PathLike, *, n_way: int = 5, k_shot: int = 5, query_size: int = 5,
                   train_split: str = "train", test_split: str = "test", seed: int = 0, val: float = 0.2,
                   test: float = 0.2, text_column: str = "text", label_column: str = "label",
                   group_column: str | None = None, split_column: str | None = None,
                   test_path: str | os.PathLike | None = None, max_length: int = MAX_LENGTH, tokenizer=None,
                   encoder: str | os.PathLike | None = None, train_within_group: bool = False,
                   test_within_group: bool = False) -> TextTasks:
    """An intent-classification sampler over a CSV file's labels (see the module docstring):
    ``train_split`` ("train" or "all") for ``sample_train``, ``test_split`` ("test", "val" or "all")
    for ``sample_test``; ``seed``, ``val`` and ``test`` choose the class split (not the sampling key).

    ``test_path``: a second CSV (same text and label columns) whose labels are the test split; ``path``
    is then split into train and val only (``test`` unused), and no label may be in both files.
    Sentences are tokenized as ``tasks.text.make_text_tasks`` does (``tokenizer``, else the encoder
    folder's, default all-MiniLM-L6-v2; one length, the longest sentence, at most ``max_length``).
    ``train_within_group`` / ``test_within_group``: every meta-training / held-out episode's labels come from one
    group (``group_column``; a ``test_path`` file then needs that column too).
    """
    for part, on in (("train", train_within_group), ("test", test_within_group)):
        if on and group_column is None:
            raise ConfigError(f"tasks.{part}_within_group draws each {part} task's labels from one group, and this CSV "
                              "has no groups; set tasks.group_column to the column that holds them, or set "
                              f"tasks.{part}_within_group: false")
    check_choice("train_split", train_split, TRAIN_SPLITS)
    check_choice("test_split", test_split, TEST_SPLITS)
    if test_path is not None and test_split == "all":
        raise ConfigError("tasks.test_split = all scores on every label of the main file, leaving tasks.test_path "
                          "unused; use tasks.test_split = test (the test file) or val")
    file = _existing(path)
    classes, column = load_csv(file, text_column=text_column, label_column=label_column, group_column=group_column,
                               split_column=split_column)
    if test_path is None:
        needed = {train_split, test_split} != {"all"}
        split = (_in_file(file, csv_split, classes, column, seed=seed, val=val, test=test) if needed
                 else {"all": np.arange(len(classes.names))})
        train, held, held_file = classes.subset(split[train_split]), classes.subset(split[test_split]), file
    else:
        held_file = _existing(test_path)
        held, _ = load_csv(held_file, text_column=text_column, label_column=label_column,
                           group_column=group_column if test_within_group else None)
        both = sorted(set(classes.names) & set(held.names))
        if both:
            raise DataError(f"the labels {', '.join(map(repr, both[:5]))}{' ...' if len(both) > 5 else ''} are in both "
                            f"{file} and the test file {held_file}; test labels must be new: rename or remove them")
        needed = train_split != "all" or test_split == "val"
        split = (_in_file(file, _train_val, file, classes, column, seed=seed, val=val) if needed
                 else {"all": np.arange(len(classes.names))})
        train = classes.subset(split[train_split])
        if test_split == "val":
            held, held_file = classes.subset(split["val"]), file
    for name, part, source in ((train_split, train, file), (test_split, held, held_file)):
        _check_split(source, name, part, k_shot + query_size)
    return tasks_from_classes(train, held, n_way=n_way, k_shot=k_shot, query_size=query_size,
                              train_split=f"csv:{train_split}", test_split=f"csv:{test_split}", max_length=max_length,
                              tokenizer=tokenizer, encoder=encoder, train_within_group=train_within_group,
                              test_within_group=test_within_group)


def _in_file(file: Path, split, *args, **kwargs) -> dict[str, np.ndarray]:
    """``split(*args, **kwargs)``, its DataErrors (too few groups to hold out) naming ``file``."""
    try:
        return split(*args, **kwargs)
    except DataError as e:
        if str(file) in str(e):
            raise
        raise DataError(f"{file}: {e} (tasks.val_fraction, tasks.test_fraction)") from None


def _check_split(file: Path, name: str, part: TextClasses, needed: int) -> None:
    """A DataError naming the labels if a split is empty or has labels with too few sentences for an episode."""
    if not part.names:
        raise DataError(f"the {name!r} split of {file} has no labels; give it some (tasks.split_column, or "
                        "tasks.val_fraction / tasks.test_fraction), or choose another split")
    # distinct sentences: with a line repeated, support and query could share it (a label of 3 sentences written 4
    # times each scored 74 % on random labels)
    few = [(n, len(set(t))) for n, t in zip(part.names, part.texts) if len(set(t)) < needed]
    if few:
        shown = ", ".join(f"{n!r} ({c})" for n, c in few[:5]) + (f" and {len(few) - 5} more" if len(few) > 5 else "")
        raise DataError(f"in {file}, the {name!r} split has labels with fewer than k_shot + query_size = {needed} "
                        f"distinct sentences: {shown}; support and query must be distinct sentences (a repeated line "
                        "counts once), so add sentences, remove "
                        "those labels, or lower k_shot or query_size")
