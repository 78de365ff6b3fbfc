"""The package's layers, read from its source (ast, nothing imported): a part imports only the parts below it.

    entry points   g16net/*.py (train, eval, collect, figs, bench, ...) and g16net/__init__.py
    run            g16net/run/
    checks         g16net/checks/      the training config's schema and checks: gathers the data sources' and
                                       backends' own schemas, runs before the run touches anything
    backends       g16net/backends/
    data, studies, diagnostics   g16net/data/, g16net/studies/, g16net/diagnostics/
    core           g16net/core/        what the run and the backends both use
    efficiency     g16net/efficiency/
    models         g16net/models/

Parts on one layer do not import each other, and no subpackage imports an entry point or the package's top
(`import g16net`, `from .. import x`): its __init__ imports the subpackages, so that would climb back up.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "g16net"
LAYERS = [("models",), ("efficiency",), ("core",), ("data", "studies", "diagnostics"), ("backends",), ("checks",),
          ("run",), ("<top>",)]
RANK = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """'g16net.run.runner' -> 'run'; the package itself and its top-level modules -> '<top>'."""
    names = module.split(".")
    if len(names) > 1 and (PACKAGE / names[1]).is_dir():
        return names[1]
    return "<top>"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    names = list(rel.parts)
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every g16net import in the file, those inside functions included."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from .. import x` in a subpackage resolves to the top package itself: '<top>', a climb
            found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == "g16net" or name.startswith("g16net.")]


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_subpackage_has_a_layer():
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert parts <= set(RANK), f"place {sorted(parts - set(RANK))} in a layer of tests/test_layout.py"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_only(path):
    own = part_of(module_name(path))
    if own == "<top>":
        return  # the entry points and the package's exports may use every part
    wrong = [f"line {line}: {name} ({part_of(name)})" for line, name in imported(path)
             if part_of(name) != own and RANK[part_of(name)] >= RANK[own]]
    assert not wrong, (f"g16net/{path.relative_to(PACKAGE)} ({own}) imports a part on its own layer or above, "
                       f"allowed: {sorted(p for p in RANK if RANK[p] < RANK[own])}: {wrong}")


def test_the_check_sees_a_climb(tmp_path, monkeypatch):
    # The rule must catch the import it exists for: a backend importing the run, written the relative way.
    fake = tmp_path / "g16net"
    (fake / "backends").mkdir(parents=True)
    (fake / "run").mkdir()
    (fake / "backends" / "__init__.py").write_text("")
    (fake / "run" / "__init__.py").write_text("")
    bad = fake / "backends" / "x.py"
    bad.write_text("def f():\n    from ..run.runner import run\n    from .. import __version__\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert [(n, part_of(n)) for _, n in imported(bad)] == [("g16net.run.runner", "run"), ("g16net", "<top>")]
    with pytest.raises(AssertionError, match="imports a part on its own layer or above"):
        test_imports_go_down_only(bad)
