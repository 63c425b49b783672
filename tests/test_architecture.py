"""The layering of docs/architecture.md holds: every import of the package goes down (or across) the
layer table, the core imports nothing from the shell, nothing imports in a circle, and modules and
functions stay small enough to read."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reptile_fn"

# module (or package prefix) -> layer, as in docs/architecture.md; the longest matching prefix wins
LAYERS = {
    "reptile_fn": 0, "reptile_fn.tree": 0, "reptile_fn.io": 0, "reptile_fn.errors": 0, "reptile_fn._blas": 0,
    "reptile_fn._malloc": 0, "reptile_fn.progress": 0,
    "reptile_fn.episode": 1, "reptile_fn.optim": 1, "reptile_fn.models": 1, "reptile_fn.losses": 1, "reptile_fn.heads": 1,
    "reptile_fn.datasets": 1, "reptile_fn.checkpoint": 1, "reptile_fn.text": 1, "reptile_fn.text.encoder": 1,
    "reptile_fn.text.gelu": 1,
    "reptile_fn.inner": 2,
    "reptile_fn.algorithms": 3, "reptile_fn.evaluate": 3, "reptile_fn.baselines": 3, "reptile_fn.tasks": 3,
    "reptile_fn.tasks.overlap": 3, "reptile_fn.peft.lora": 3, "reptile_fn.peft.io": 3, "reptile_fn.text.batching": 3,
    "reptile_fn.embed": 4, "reptile_fn.peft": 4, "reptile_fn.text.frozen": 4,
    "reptile_fn.config": 5, "reptile_fn.coerce": 5, "reptile_fn.distributed": 5, "reptile_fn.plots": 5,
    "reptile_fn.pretrained": 5,
    "reptile_fn.run": 6,
    "reptile_fn.cli": 7, "reptile_fn.cli_options": 7, "reptile_fn.__main__": 7,
}
CORE = 4
MAX_MODULE_LINES = 420  # "~400"
MAX_FUNCTION_LINES = 80


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every reptile_fn module ``name`` imports, at the top or inside a function (``from x import y``: x.y
    when y is a module, else x)."""
    known = modules()
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("reptile_fn")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("reptile_fn"):
                continue
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m != name}


def graph() -> dict[str, set[str]]:
    return {name: imports(name, path) for name, path in modules().items()}


def test_every_module_has_a_layer_and_imports_only_down_or_across():
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, deps in graph().items() for b in deps if layer(b) > layer(a)]
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_nothing_from_the_shell():
    wrong = [f"{a} imports {b}" for a, deps in graph().items() if layer(a) <= CORE for b in deps if layer(b) > CORE]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules_or_folders():
    g = graph()
    # a package's __init__ importing its own submodules is not a cycle; a submodule importing its package is
    edges = {a: {b for b in deps if not a.startswith(b + ".")} for a, deps in g.items()}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [c for c in (cycle_from(m) for m in edges) if c]
    assert not cycles, " -> ".join(cycles[0])
    folders = {}
    for a, deps in edges.items():
        fa = a.split(".")[1] if a.count(".") >= 1 else a
        for b in deps:
            fb = b.split(".")[1] if b.count(".") >= 1 else b
            if fa != fb:
                folders.setdefault(fa, set()).add(fb)
    both = sorted({tuple(sorted((a, b))) for a, bs in folders.items() for b in bs if a in folders.get(b, ())})
    assert not both, f"folders importing each other: {both}"


@pytest.mark.parametrize("name, path", sorted(modules().items()))
def test_modules_and_functions_stay_small(name, path):
    src = path.read_text()
    assert len(src.splitlines()) <= MAX_MODULE_LINES, f"{name}: {len(src.splitlines())} lines"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(src))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long}"
