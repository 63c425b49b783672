"""reptile_fn's side of W3 and W4, built with the library's public API from `common`'s data and starting parameters.

benchmarks/throughput.py times these; the peers' `check()` compares against them (the cross-framework reference),
so all frameworks run the same math on the same numbers.

- W3 (`text_step`): all-MiniLM-L6-v2 (`text.encoder.load_encoder(None)`) under `text.encoder.text_classifier`, wrapped
  by `peft.peft_model(..., method="lora", targets=TEXT_TARGETS, rank=4)`, with what adapts and what Reptile moves from
  `peft.patterns("lora", reptile=True)` (adapter A, B and the head), as `run/build.py` wires configs/clinc_5w5s_lora.yaml;
  the meta-step is `ALGORITHMS["reptile"]` with inner Adam (lr 0.01, 5 full-batch steps) and outer SGD (beta 0.01).
- W4 (`evaluate`): `evaluate.per_episode_curves` with `InnerLoop(lr=1e-3, steps=50, optimizer="adam",
  adam_betas=(0.0, 0.999))` over `models.conv4((28, 28, 1), 5, norm="batch")`, query loss and accuracy after the
  last step: what the library's evaluation runs for configs/omniglot_5w1s.yaml (full-batch steps here).
"""

from __future__ import annotations

import reptile_fn  # noqa: F401  (before mlx.core: importing reptile_fn loads OpenBLAS on Linux)
from reptile_fn import optim, peft
from reptile_fn import tree as T
from reptile_fn.algorithms import ALGORITHMS, MetaStep
from reptile_fn.episode import Episode
from reptile_fn.evaluate import per_episode_curves
from reptile_fn.inner import InnerLoop
from reptile_fn.losses import accuracy, cross_entropy
from reptile_fn.models import Model, conv4

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from . import common

TEXT_TARGETS = ["encoder.layers.*.query.w", "encoder.layers.*.value.w"]


# ---------------------------------------------------------------------------------------------- W3


def text_model(encoder=None) -> tuple[Model, tuple[str, ...], tuple[str, ...]]:
    """(the PEFT model over {"base", "adapter"}, the inner patterns, the meta patterns) of W3.

    `encoder`: `(params, config, tokenizer)` from `text.encoder.load_encoder` (default: load all-MiniLM-L6-v2)."""
    from reptile_fn.text.encoder import load_encoder, text_classifier

    tree, config, _ = encoder or load_encoder(None)
    if (config.hidden_size, config.num_layers) != (common.TEXT_HIDDEN, common.TEXT_LAYERS):
        raise ValueError(f"W3 is sized for all-MiniLM-L6-v2 (hidden {common.TEXT_HIDDEN}, {common.TEXT_LAYERS} layers), "
                         f"got hidden {config.hidden_size}, {config.num_layers} layers")
    base = text_classifier(tree, config, common.TEXT_WAY, normalize=True)
    pf = peft.peft_model(base, method="lora", targets=TEXT_TARGETS, rank=common.TEXT_RANK)
    inner, meta = peft.patterns("lora", reptile=True)  # Reptile: what adapts is what the outer step moves
    return pf.model, inner, meta


def text_params(model: Model, seed: int = 0) -> dict:
    """W3's starting tree: the pretrained encoder, and the adapter and head of `common.lora_head_params(seed)`."""
    params = model.init(mx.random.key(seed))
    start = common.lora_head_params(seed)
    layers = params["adapter"]["encoder"]["layers"]
    expected = {f"layer{i}.{n}.{f}" for i in range(common.TEXT_LAYERS) for n in common.LORA_TARGETS
                for f in ("lora_a", "lora_b")}
    got = {f"{layer}.{n}.{f}" for layer, d in layers.items() for n, w in d.items() for f in w["w"]}
    assert got == expected, sorted(got ^ expected)
    for key, value in start.items():
        if key.startswith("head."):
            params["base"]["head"][key.split(".")[1]] = mx.array(value)
        else:
            layer, name, field = key.split(".")
            assert tuple(layers[layer][name]["w"][field].shape) == value.shape, key
            layers[layer][name]["w"][field] = mx.array(value)
    return params


def text_step(meta_batch: int, *, batched: bool = True, compiled: bool = True, encoder=None, seed: int = 0):
    """(MetaStep, starting params, pooled Episodes) of W3: Reptile, inner Adam on the adapter and head."""
    model, inner_pat, meta_pat = text_model(encoder)
    w = common.W3
    loop = InnerLoop(lr=w.inner_lr, steps=w.inner_steps, optimizer="adam", adam_betas=w.adam_betas,
                     adam_eps=common.ADAM_EPS, trainable=T.match(inner_pat))
    meta: MetaStep = ALGORITHMS["reptile"](model.apply, cross_entropy, loop, optim.sgd(w.outer_lr),
                                           meta_trainable=T.match(meta_pat), batched=batched, compiled=compiled)
    batches = []
    for ids, mask, labels in common.token_pool(meta_batch, seed=seed):
        x = mx.stack([mx.array(ids), mx.array(mask)], axis=-2)  # (M, 25, 2, L): text.encoder.stack_inputs per task
        y = mx.array(labels)
        batches.append(Episode(x, y, x, y))  # Reptile adapts on the support set only
    return meta, text_params(model, seed), batches


def text_trainable(params: dict) -> dict[str, np.ndarray]:
    """The adapter and head of a W3 tree in `common.lora_head_params`'s flat numpy layout."""
    out = {}
    for layer, d in params["adapter"]["encoder"]["layers"].items():
        for name, w in d.items():
            for field, a in w["w"].items():
                out[f"{layer}.{name}.{field}"] = np.array(a)
    for field, a in params["base"]["head"].items():
        out[f"head.{field}"] = np.array(a)
    return out


def text_reference(meta_batch: int, steps: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Adapter and head after `steps` W3 meta-steps of reptile_fn's training path, on `common.token_pool`'s batches."""
    meta, params, batches = text_step(meta_batch, seed=seed)
    state = meta.init(params)
    for t in range(steps):
        params, state, _ = meta.step(params, state, batches[t % len(batches)], mx.random.key(t))
    return text_trainable(params)


def embeddings(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence embeddings (n, 384), L2-normalised, from `text.encoder.encode`."""
    from reptile_fn.text.encoder import encode, load_encoder

    tree, config, _ = load_encoder(None)
    return np.array(encode(tree, config, ids, mask, normalize=True))


# ---------------------------------------------------------------------------------------------- W4


def conv4_bn_tree(p: dict[str, np.ndarray]) -> dict:
    """`common.conv4_bn_params` as `models.conv4(..., norm="batch")`'s tree: HWIO kernels become (out, kh, kw, in)."""
    tree = {f"conv{i}": {"w": mx.array(p[f"c{i}"].transpose(3, 0, 1, 2)), "b": mx.array(p[f"cb{i}"])}
            for i in range(common.CONV_LAYERS)}
    tree.update({f"norm{i}": {"scale": mx.array(p[f"s{i}"]), "offset": mx.array(p[f"o{i}"])}
                 for i in range(common.CONV_LAYERS)})
    tree["head"] = {"w": mx.array(p["w"]), "b": mx.array(p["b"])}
    return tree


def eval_setup(n_episodes: int, steps: int | None = None, seed: int = 0):
    """(InnerLoop, Model, starting params, Episode) of W4; `steps` overrides the 50 inner steps (checks)."""
    w = common.W4
    loop = InnerLoop(lr=w.inner_lr, steps=w.inner_steps if steps is None else steps, optimizer="adam",
                     adam_betas=w.adam_betas, adam_eps=common.ADAM_EPS)
    model = conv4((common.IMAGE, common.IMAGE, 1), common.N_WAY, filters=common.FILTERS, norm="batch")
    params = conv4_bn_tree(common.conv4_bn_params(seed))
    reference = model.init(mx.random.key(0))  # the same paths and shapes as the model's own init
    assert {k: v.shape for k, v in tree_flatten(params)} == {k: v.shape for k, v in tree_flatten(reference)}
    episodes = Episode(*(mx.array(a) for a in common.eval_episodes(n_episodes, seed)))
    return loop, model, params, episodes


def evaluate(loop: InnerLoop, model: Model, params: dict, episodes: Episode) -> dict[str, np.ndarray]:
    """Query loss and accuracy of every episode after the loop's last step: {"loss", "metric"} arrays (E,)."""
    curves = per_episode_curves(loop, model.apply, cross_entropy, params, episodes, metric=accuracy, record=[loop.steps])
    return {k: v[:, 0] for k, v in curves.items()}


def eval_reference(n_episodes: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """reptile_fn's W4 evaluation with `steps` inner steps: per-episode query loss and accuracy."""
    return evaluate(*eval_setup(n_episodes, steps, seed))
