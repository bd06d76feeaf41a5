"""The layout README "How it is built" describes: the arrows run one way (cli -> managers ->
backends -> core), no backend imports another, and the cache composes public interfaces only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agentmem"
CORE = {
    "agentmem.session",
    "agentmem.items",
    "agentmem.errors",
    "agentmem.manager",
    "agentmem.records",
    "agentmem.forks",
    "agentmem.windows",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    base = PACKAGE.parent / relative
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The agentmem modules ``path`` imports (``from pkg import module`` counts the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _is_module(submodule) else node.module)
    return {name for name in found if name == "agentmem" or name.startswith("agentmem.")}


MODULES = {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _family(name: str) -> str:
    return ".".join(name.split(".")[:2])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _family(m) in CORE))
def test_core_modules_import_only_the_core_and_private_helpers(module: str) -> None:
    outside = {
        name
        for name in MODULES[module]
        if _family(name) not in CORE and not name.split(".")[1].startswith("_")
    }
    assert not outside, f"{module} imports {outside}"


@pytest.mark.parametrize("family", ["agentmem.sql", "agentmem.redis"])
def test_a_backend_imports_no_other_backend_nor_the_cli(family: str) -> None:
    others = {"agentmem.sql", "agentmem.redis", "agentmem.cache", "agentmem.cli"} - {family}
    for module, imported in MODULES.items():
        if _family(module) == family:
            wrong = {name for name in imported if _family(name) in others}
            assert not wrong, f"{module} imports {wrong}"


def test_the_cache_composes_the_public_sql_and_redis_interfaces_only() -> None:
    for module, imported in MODULES.items():
        if _family(module) == "agentmem.cache":
            sql = {name for name in imported if _family(name) == "agentmem.sql"}
            redis = {name for name in imported if _family(name) == "agentmem.redis"}
            assert sql <= {"agentmem.sql.base"}, f"{module} imports {sql}"
            assert redis <= {"agentmem.redis.client"}, f"{module} imports {redis}"
            assert not {name for name in imported if _family(name) == "agentmem.cli"}


def test_only_the_cli_imports_the_cli() -> None:
    for module, imported in MODULES.items():
        if _family(module) != "agentmem.cli":
            assert not {name for name in imported if _family(name) == "agentmem.cli"}, module
