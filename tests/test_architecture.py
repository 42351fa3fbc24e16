"""The docs checked against the source: docs/architecture.md's import rule (a module imports only
the modules listed above it in the table; imports inside functions are only cli's, the optional
dependencies' and readline's), and docs/pitfalls.md's tests exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "aiayn"
# Imported inside functions on purpose: cli's handlers (a fast --help) and optional dependencies.
LAZY_OK = {"cli"}
LAZY_PACKAGES = {"transformers", "ctranslate2", "torch.utils.tensorboard", "readline"}


def table_order() -> list[str]:
    """Module names in the order of the architecture table (a row may name several modules)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    order = []
    for row in re.findall(r"^\| (`[^|]+`) \|", text, re.M):
        order += re.findall(r"`(\w+)\.py`", row)
    return order


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(aiayn modules imported at the top, everything imported inside a function or method)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, inner = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found = {n.split(".")[1] for n in names if n.startswith("aiayn.") and len(n.split(".")) > 1}
        (top if node.col_offset == 0 else inner).update(found if found else set())
        if node.col_offset:
            inner.update(n for n in names if not n.startswith("aiayn"))
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return {m for m in top if m in modules}, inner


def test_every_module_is_in_the_table_once():
    order = table_order()
    assert len(order) == len(set(order))
    assert set(order) == {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}


def test_imports_run_one_way_down_the_table():
    order = table_order()
    rank = {m: i for i, m in enumerate(order)}
    for name in order:
        top, _ = imports(PACKAGE / f"{name}.py")
        upward = sorted(m for m in top if m != name and rank[m] > rank[name])
        assert not upward, f"{name}.py imports {upward}, listed below it in docs/architecture.md"


def test_imports_inside_functions_are_only_where_they_buy_something():
    for name in table_order():
        if name in LAZY_OK:
            continue
        _, inner = imports(PACKAGE / f"{name}.py")
        unexpected = sorted(m for m in inner if not any(m == p or m.startswith(p + ".") for p in LAZY_PACKAGES))
        assert not unexpected, f"{name}.py imports {unexpected} inside a function"


def test_every_test_named_in_the_pitfalls_exists():
    """docs/pitfalls.md names the test that guards each item; a renamed or moved test must not
    leave the page pointing nowhere."""
    text = (ROOT / "docs" / "pitfalls.md").read_text(encoding="utf-8")
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", text)
    assert len(named) >= 20
    for file, test in named:
        source = (ROOT / "tests" / file).read_text(encoding="utf-8")
        assert re.search(rf"^def {test}\(", source, re.M), f"docs/pitfalls.md names {file}::{test}, which is not there"
