"""benchmarks/report.py's JSON writer: what it writes reads back as the same object, number lists on one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import write_json  # noqa: E402

numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False))
leaves = st.one_of(numbers, st.text(alphabet="a1[]{} ,\n\"\\", max_size=8), st.none(), st.booleans())
trees = st.recursive(leaves, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                    st.dictionaries(st.text(alphabet="a[ ]\"", max_size=4), kids, max_size=4)),
                     max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=4), trees, max_size=5))
def test_round_trip(tmp_path_factory, obj):
    path = tmp_path_factory.mktemp("json") / "r.json"
    write_json(path, obj, indent=1)
    assert json.loads(path.read_text()) == obj
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left behind


def test_per_episode_lists_take_one_line_each(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"row": {"correct": [[5, 20, 25], [4, 10, 15]], "accuracy": [20.0, 73.5], "name": ["a", "b"]}},
               indent=1)
    lines = path.read_text().splitlines()
    assert '  "correct": [[5, 20, 25], [4, 10, 15]],' in lines and '  "accuracy": [20.0, 73.5],' in lines
    assert '   "a",' in lines  # lists of strings keep json's layout


def test_render_skips_other_files_and_renders_loop_and_profile(tmp_path, monkeypatch):
    from benchmarks import report

    repo = Path(__file__).resolve().parents[1] / "research" / "perf"
    for name in ("cpu.json", "loop_overhead.json", "profile_w2.json"):
        (tmp_path / name).write_text((repo / name).read_text())
    (tmp_path / "blas.json").write_text(json.dumps({"gflops": 1.0}))  # a file with a section of its own
    monkeypatch.setattr(report, "PERF", tmp_path)
    text = report.render()
    assert "### cpu — CPU" in text and "blas.json" not in text and "### blas" not in text
    loop = json.loads((repo / "loop_overhead.json").read_text())
    assert f"| {loop['loop_vs_step']:.2f}x |" in text  # the loop's ratio to the step, as measured
    profile = json.loads((repo / "profile_w2.json").read_text())
    assert f"{profile['gemm_ms']:.2f} ms, {100 * profile['gemm_share']:.0f}% of the inner step" in text
