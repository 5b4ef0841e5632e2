"""The protocol core imports no I/O library (STYLE.md: sans-I/O core, thin shells)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SANS_IO = [
    "shared/jid.py",
    "shared/sasl.py",
    "shared/credentials.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "shared" / "xmpp").glob("*.py")),
]
FORBIDDEN = {"asyncio", "nats", "redis", "aiohttp", "socket", "ssl", "uvloop"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("shared."):
                names.add(node.module)
    return names


def _closure(rel: str, seen: set[str]) -> set[str]:
    """Every top-level module imported by `rel`, following shared.* imports."""
    if rel in seen:
        return set()
    seen.add(rel)
    found = set()
    for name in _imports(ROOT / rel):
        if name.startswith("shared."):
            target = name.replace(".", "/") + ".py"
            if (ROOT / target).exists():
                found |= _closure(target, seen)
        else:
            found.add(name)
    return found


@pytest.mark.parametrize("module", SANS_IO)
def test_protocol_module_imports_no_io(module: str) -> None:
    assert not (_closure(module, set()) & FORBIDDEN)
