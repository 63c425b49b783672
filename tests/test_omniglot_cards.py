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
