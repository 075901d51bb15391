"""The package layout's one rule: imports point one way.

The packages are layered (DESIGN §2 "Layout")::

    core ← actors ← wire ← providers ← engine ← remote, local ← observe ← api ← runtime
        ← cluster ← apps

A module may import its own package and any package to its left, never one to its right,
and ``remote`` and ``local`` (siblings) never each other. ``testkit`` — test doubles shipped
with the package — may import any library package, and only the apps import it. Every
import counts: at the top, inside a function, or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import rakka_inference

ROOT = Path(rakka_inference.__file__).parent

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("actors",),
    ("wire",),
    ("providers",),
    ("engine",),
    ("remote", "local"),
    ("observe",),
    ("api",),
    ("runtime",),
    ("cluster",),
    ("apps",),
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
TESTKIT = "testkit"


def imported_modules(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """Every ``rakka_inference`` module ``path`` imports, with the line."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name == "rakka_inference":  # from rakka_inference import runtime
                for alias in node.names:
                    yield node.lineno, f"{name}.{alias.name}"
            elif name.startswith("rakka_inference."):
                yield node.lineno, name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rakka_inference"):
                    yield node.lineno, alias.name


def package_of(module: str) -> str | None:
    """The top-level package of a ``rakka_inference`` module (None for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(root: Path) -> list[str]:
    """Every import that runs against the layering, as ``file:line: a -> b``."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        source = package_of(module)
        for line, target in imported_modules(path, module):
            target_package = package_of(target)
            if source is None or target_package is None or target_package == source:
                continue
            if target_package not in RANK and target_package != TESTKIT:
                continue  # a module of the root package (the version, say)
            if allowed(source, target_package):
                continue
            found.append(f"{path.relative_to(root.parent)}:{line}: {source} -> {target_package}")
    return found


def allowed(source: str, target: str) -> bool:
    if target == TESTKIT:
        return source == "apps"
    if source == TESTKIT:
        return target != "apps"
    if source not in RANK:
        return False  # a package the layering does not place yet
    return RANK[target] < RANK[source]


def test_every_package_has_a_place() -> None:
    packages = {path.name for path in ROOT.iterdir() if (path / "__init__.py").exists()}
    assert packages - {TESTKIT} == set(RANK)


def test_imports_point_one_way() -> None:
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    ("source", "statement", "expected"),
    [
        (
            "wire/extra.py",
            "from rakka_inference.remote.transports.base import Deadlines",
            "wire -> remote",
        ),
        ("remote/extra.py", "from rakka_inference.local import engine", "remote -> local"),
        ("engine/extra.py", "import rakka_inference.runtime.request", "engine -> runtime"),
        ("core/extra.py", "from ..observe import tracing", "core -> observe"),
        ("api/extra.py", "def f(): from rakka_inference.testkit import faults", "api -> testkit"),
    ],
)
def test_a_back_edge_is_caught(tmp_path: Path, source: str, statement: str, expected: str) -> None:
    root = tmp_path / "rakka_inference"
    (root / source).parent.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / source).write_text(statement + "\n")
    assert violations(root) == [f"rakka_inference/{source}:1: {expected}"]


def test_downward_imports_pass(tmp_path: Path) -> None:
    root = tmp_path / "rakka_inference"
    (root / "runtime").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "runtime" / "x.py").write_text(
        "from rakka_inference.core import errors\nfrom ..engine.queue import RequestQueue\n"
    )
    assert violations(root) == []
