"""The layers of the tree, checked by walking every module's imports (docs/architecture.md,
"Layout"):

* the protocol core (``shared/xmpp/``) imports no I/O library, directly or through another
  module of ``shared``: bytes in, events out (sans-I/O);
* the library (``shared/``) imports no service and no dev tooling;
* no service imports another service (``services/cli``, the operator's command, may start
  the local cluster through ``devtools``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SANS_IO = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "shared" / "xmpp").glob("*.py"))
IO_LIBRARIES = {"asyncio", "nats", "redis", "aiohttp", "asyncpg", "socket", "ssl", "uvloop"}
LIBRARY = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "shared").rglob("*.py"))
SERVICES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "services").rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module named by an absolute import in `path` (relative ones stay in the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_file(name: str) -> Path | None:
    base = ROOT / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _closure(rel: str, seen: set[str]) -> set[str]:
    """Top-level names imported by `rel`, following the imports of shared.* modules."""
    if rel in seen:
        return set()
    seen.add(rel)
    found: set[str] = set()
    for name in _imports(ROOT / rel):
        top = name.split(".")[0]
        if top == "shared":
            target = _module_file(name)
            if target is not None:
                found |= _closure(str(target.relative_to(ROOT)), seen)
        else:
            found.add(top)
    return found


@pytest.mark.parametrize("module", SANS_IO)
def test_protocol_module_imports_no_io(module: str) -> None:
    assert not (_closure(module, set()) & IO_LIBRARIES)


@pytest.mark.parametrize("module", LIBRARY)
def test_library_imports_no_service_and_no_dev_tooling(module: str) -> None:
    tops = {name.split(".")[0] for name in _imports(ROOT / module)}
    assert not tops & {"services", "devtools", "tests", "loadtest"}


@pytest.mark.parametrize("module", SERVICES)
def test_no_service_imports_another(module: str) -> None:
    own = Path(module).parts[1]
    others = {
        name.split(".")[1]
        for name in _imports(ROOT / module)
        if name.startswith("services.") and name.count(".") >= 1
    }
    assert others <= {own}


def test_the_walk_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The checks above can fail: a module importing asyncio is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("import asyncio\nfrom services.router import x\n")
    assert "asyncio" in {n.split(".")[0] for n in _imports(probe)}
    assert "services.router" in _imports(probe)
