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
