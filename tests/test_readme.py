"""The README's promises: its Python example runs and its quick start matches CI."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_api_example_runs_and_learns(capsys):
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    acc = float(re.search(r"after 5 steps: ([0-9.]+)", out).group(1))
    assert 0.6 < acc <= 1.0, out  # 100 meta-iterations already beat chance (0.5) clearly


def test_quick_start_is_two_commands_and_ci_runs_the_test_command():
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["uv run reptile-fn train", "uv run pytest"]
    assert "uv run pytest" in (ROOT / ".ci" / "run").read_text()


def test_config_reference_documents_every_key():
    from reptile_fn.config import leaf_keys

    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", README, re.M))
    assert set(leaf_keys()) <= documented, set(leaf_keys()) - documented


def test_readme_peft_example_runs_and_prints_what_it_says(capsys):
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", README, re.S) if "peft" in c]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    promised = re.search(r"print\(peft.ranks.*# (.*)$", code, re.M).group(1)
    assert printed == promised


def test_readme_python_snippets_run_clean_in_a_fresh_interpreter(tmp_path):
    """Each snippet as a user pastes it into a new Python: no warning (importing mlx.core before reptile_fn warns
    that the slow reference BLAS may run)."""
    import subprocess
    import sys

    for i, code in enumerate(re.findall(r"```python\n(.*?)```", README, re.S)):
        script = tmp_path / f"snippet{i}.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, "-W", "default", str(script)], capture_output=True, text=True, cwd=tmp_path,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr, (i, proc.stderr)
