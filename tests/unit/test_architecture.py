"""The package arrows say what they mean: the contract is a leaf both sides import; the array
imports nothing of the host but the contract; the host never imports the array's code."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path) -> set[str]:
    """Every module a file imports by its absolute name (a relative import stays in its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module or "")
    return found


def ours(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", ours("provider/contract"), ids=lambda p: p.name)
def test_the_contract_is_a_leaf(path):
    assert {m for m in imports(path) if m.split(".")[0] in ("provider", "targets")} <= {
        m for m in imports(path) if m.startswith("provider.contract")}


@pytest.mark.parametrize("path", ours("targets"), ids=lambda p: p.name)
def test_the_array_imports_only_the_contract_of_the_host_side(path):
    assert not [m for m in imports(path) if m.startswith("provider") and not m.startswith("provider.contract")]


@pytest.mark.parametrize("path", ours("provider"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_host_side_never_imports_the_array(path):
    assert not [m for m in imports(path) if m.split(".")[0] == "targets"]
