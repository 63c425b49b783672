"""benchmarks/omniglot.py's model cards: scores read from the results table, as the shipped 5-way cards state."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import omniglot  # noqa: E402

from reptile_fn import pretrained  # noqa: E402


def test_cards_carry_the_tables_scores_and_print(tmp_path, monkeypatch):
    res = json.loads((ROOT / "research" / "omniglot_standard.json").read_text())
    monkeypatch.setattr(omniglot, "PRETRAINED", tmp_path)
    paths = omniglot.write_cards(res, 5, {"algorithm": "reptile", "meta_batch_size": 5, "command": "train"}, "n")
    assert [p.name for p in paths] == ["omniglot-5w1s.json", "omniglot-5w5s.json"]
    for path in paths:
        card = json.loads(path.read_text())
        shipped = json.loads((ROOT / "reptile_fn" / "pretrained" / path.name).read_text())
        assert card["scores"] == shipped["scores"]  # the hand-written 5-way cards agree with the table
        assert card["paper"]["transductive"] == shipped["paper"]["transductive"]
        assert card["training"]["meta_iterations"] == res["runs"]["5"]["iteration"]
        text = pretrained.format_card(card)
        assert f"{card['scores'][0]['accuracy']:.2f} ± {card['scores'][0]['ci95']:.2f}%" in text


def test_a_run_outside_the_table_is_drawn_and_listed_with_its_setup(tmp_path, monkeypatch):
    """``--curve LABEL=DIR``: a committed run's held-out curve, read from its metrics.jsonl, appears in the
    figure and in the report's list with the settings that make it comparable (meta-batch, iterations planned)."""
    run = ROOT / "research" / "runs" / "omniglot-20way-gpu4k"
    other = omniglot.other_curve(run)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [p["iteration"] for p in other["curve"]] == [r["iteration"] for r in evals] and evals
    assert other["curve"][0]["accuracy"] == 100 * evals[0]["eval"]["metric"]
    assert other["meta_batch_size"] == 32 and other["run"] == "research/runs/omniglot-20way-gpu4k"
    res = json.loads((ROOT / "research" / "omniglot_standard.json").read_text())
    res["curves"] = {"20-way on the H200": other}
    text = omniglot.render_standard(res)
    line = next(x for x in text.splitlines() if x.startswith("- 20-way on the H200"))
    assert "meta-batch 32" in line and f"{other['curve'][-1]['accuracy']:.1f}%" in line
    monkeypatch.setattr(omniglot, "FIGURE", tmp_path / "curve.png")
    omniglot.plot(res)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_alphabet_rows_replace_the_earlier_run_once_the_new_run_is_scored(tmp_path, monkeypatch):
    """The alphabet-disjoint row: the earlier 6,000-iteration run until a split of the new run is scored, then one
    row per scored split (its own iterations, split and queries per class), the earlier row gone."""
    old = json.loads((ROOT / "research" / "omniglot.json").read_text())
    files = (tmp_path / "test.json", tmp_path / "evaluation.json")
    monkeypatch.setattr(omniglot, "ALPHABETS_JSONS", files)
    before = omniglot.alphabet_rows()
    assert len(before) == 1 and f"| {old['runs']['5']['iteration']:,} |" in before[0]
    assert "5 test background alphabets; 5 queries" in before[0]
    cell = {"accuracy": 93.25, "ci95": 0.71, "episodes": 1000, "split": "evaluation", "query_size": 1}
    files[1].write_text(json.dumps({"protocol": {"episodes": 1000}, "runs": {"5": {"iteration": 100_000}},
                                    "cells": {"5w1": {"transductive": cell}}}))
    after = omniglot.alphabet_rows()
    assert after == ["| alphabet-disjoint 5-way 1-shot (trained on 20 background alphabets, scored on the 20 alphabets "
                     "of images_evaluation.zip; 1 query per class) | 100,000 | 93.25 ± 0.71 | | not run | |"]
