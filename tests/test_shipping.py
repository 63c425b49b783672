"""benchmarks/shipping.py: a run's checkpoint re-saved as a shipped init loads by name with its config changed."""

from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
from conftest import TINY, quiet

from reptile_fn import checkpoint, io, pretrained
from reptile_fn import config as C
from reptile_fn import run as R

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import shipping  # noqa: E402


def test_shipped_file_holds_the_runs_arrays_and_the_overridden_config(tmp_path, monkeypatch):
    run = tmp_path / "run"
    R.train(C.load(None, TINY), run, progress=False, log=quiet)
    monkeypatch.setattr(shipping, "PRETRAINED", tmp_path / "pretrained")
    (tmp_path / "pretrained").mkdir()
    path = shipping.ship(run, "tiny-init", ["tasks.k_shot=3", "eval.inner_steps=7"])
    shipped, meta = checkpoint.load(path)
    trained, trained_meta = checkpoint.load(run / R.CHECKPOINT)
    assert sorted(shipped) == sorted(trained)
    assert all(mx.array_equal(shipped[k], trained[k]).item() for k in shipped)
    assert meta["iteration"] == trained_meta["iteration"]
    cfg = C.from_dict(meta["config"], stored=True)
    assert (cfg.tasks.k_shot, cfg.eval.inner_steps, cfg.tasks.data_dir) == (3, 7, None)
    monkeypatch.setattr(pretrained, "HERE", tmp_path / "pretrained")
    assert pretrained.resolve("tiny-init") == path


def test_text_card_reads_validation_and_test_scores(tmp_path):
    from benchmarks import text

    run = tmp_path / "run"
    R.train(C.load(None, TINY), run, progress=False, log=quiet)
    val = {1: {"inits": {"meta": {"steps": [0, 1, 5], "episodes": 100,
                                  "metric": {"mean": [0.95, 0.951, 0.948], "ci95": [0.012, 0.012, 0.012]}}}}}
    test = {"episodes": 500, "cells": {"Banking77|5": {"fomaml-proto": {"accuracy": [90.0, 91.0, 97.25], "ci95": [1, 1, 0.5],
                                                       "episodes": 500, "steps": [0, 1, 5]}}}}
    card = text.text_card("x", run, val, test, "fomaml-proto")
    assert [(s["accuracy"], s["steps"]) for s in card["scores"]] == [(95.0, 0), (94.8, 5), (97.25, 5)]
    assert card["scores"][2]["split"] == "Banking77, 5-way 5-shot"
    assert card["training"]["meta_iterations"] == C.load(None, TINY).meta_iterations
    assert pretrained.format_card(card).count("\n  score      ") == 3


def test_a_shipped_adapter_stores_its_frozen_base_as_digests_and_loads_whole(tmp_path, monkeypatch):
    """A PEFT run's frozen base (an encoder the loader rebuilds) goes into the shipped file as digests only, as
    in the run's own checkpoint: the LoRA init over all-MiniLM-L6-v2 is then 0.5 MB, not 90, and still loads
    by name to the trained parameters."""
    run = tmp_path / "run"
    cfg = C.with_overrides(C.load(None, TINY), ["peft.method=lora", "peft.base=init", "peft.targets=[layer*.w]"])
    R.train(cfg, run, progress=False, log=quiet)
    monkeypatch.setattr(shipping, "PRETRAINED", tmp_path / "pretrained")
    (tmp_path / "pretrained").mkdir()
    path = shipping.ship(run, "tiny-lora")
    shipped, _ = checkpoint.load(path)
    frozen = [k for k in shipped if ".base.layer" in k]  # the body; the head (params.base.head) was meta-learned
    assert frozen and all(k.startswith("derived.params.") for k in frozen)
    assert "params.base.head.w" in shipped
    assert any(k.startswith("params.adapter.") for k in shipped)
    _, params, _, _ = R.load(run / R.CHECKPOINT, with_tasks=False)
    monkeypatch.setattr(pretrained, "HERE", tmp_path / "pretrained")
    _, loaded, _, _ = R.load("tiny-lora", with_tasks=False)
    assert io.digest(loaded) == io.digest(params)
