"""Every test can fail: each test function asserts something, expects an exception
(`pytest.raises`, `pytest.fail`, ``raise AssertionError``), or calls a helper of the test tree
that does, directly or through other helpers.  A test that only runs code proves nothing
unless running is what it checks: those few are listed here with their reason."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent
EXPECTING = {"raises", "fail", "warns", "deprecated_call"}
# Tests whose whole claim is "this does not raise": any exception fails them.
NOTHING_RAISED_IS_THE_CHECK = {
    # a fuzz property: only StreamError may come out of the parser, anything else fails it
    "test_random_bytes_never_raise_anything_but_stream_error",
}

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _called(fn: Function) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                names.add(f.id)
            elif isinstance(f, ast.Attribute):
                names.add(f.attr)
    return names


def _expects_here(fn: Function) -> bool:
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "AssertionError":
                return True
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in EXPECTING:
                return True
    return False


def _functions() -> tuple[dict[str, list[Function]], list[tuple[Path, Function]]]:
    helpers: dict[str, list[Function]] = {}
    tests: list[tuple[Path, Function]] = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                helpers.setdefault(node.name, []).append(node)
                if node.name.startswith("test_") and path.name.startswith("test_"):
                    tests.append((path, node))
    return helpers, tests


def test_every_test_function_can_fail() -> None:
    helpers, tests = _functions()
    known: dict[str, bool] = {}

    def expects(name: str) -> bool:
        if name not in known:
            known[name] = False  # a cycle proves nothing
            known[name] = any(
                _expects_here(fn) or any(expects(n) for n in _called(fn) if n in helpers)
                for fn in helpers.get(name, [])
            )
        return known[name]

    vacuous = [
        f"{path.relative_to(ROOT.parent)}::{fn.name}"
        for path, fn in tests
        if fn.name not in NOTHING_RAISED_IS_THE_CHECK
        and not _expects_here(fn)
        and not any(expects(n) for n in _called(fn) if n in helpers)
    ]
    assert len(tests) > 500  # the walk found the suite
    assert vacuous == []


def test_the_check_catches_a_test_without_an_assertion() -> None:
    tree = ast.parse("def test_x():\n    run()\n\ndef test_y():\n    assert run()\n")
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [_expects_here(fn) for fn in fns] == [False, True]
