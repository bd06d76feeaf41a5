"""The distribution ``agentmem-sessions``: build the sdist and, from it, the wheel; check what they
carry and their metadata; install the wheel in a fresh virtualenv and upgrade new databases from
there, outside the repo (the migrations ship inside the wheel)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from agentmem import migrate

REPO = Path(__file__).resolve().parent.parent
DIST = "agentmem-sessions"
VERSION = "0.1.0"

UPGRADE = """
import asyncio, sys
import agentmem, agentmem.migrate as m
from sqlalchemy.ext.asyncio import create_async_engine
assert "site-packages" in agentmem.__file__, agentmem.__file__
async def main(url):
    engine = create_async_engine(m.async_url(url))
    await m.upgrade(engine)
    print("at", await m.current(engine))
    await engine.dispose()
asyncio.run(main(sys.argv[1]))
"""


def source_files(folder: str) -> set[str]:
    """The files of ``folder`` that belong in a distribution (no caches, no bytecode)."""
    root = REPO / folder
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel built from that sdist (as ``python -m build`` does by default)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (sdist,) = out.glob("agentmem_sessions-*.tar.gz")
    (wheel,) = out.glob("agentmem_sessions-*.whl")
    return sdist, wheel


@pytest.mark.slow
@pytest.mark.sqlite
def test_sdist_carries_the_package_migrations_and_docs_only(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    top = f"agentmem_sessions-{VERSION}/"
    with tarfile.open(sdist) as tar:
        names = {
            name.removeprefix(top) for name in tar.getnames() if not tar.getmember(name).isdir()
        }
    expected = {
        *(f"agentmem/{name}" for name in source_files("agentmem")),
        *(f"migrations/{name}" for name in source_files("migrations")),
        "alembic.ini",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "pyproject.toml",
        "PKG-INFO",
        ".gitignore",  # always added by the build backend, so a wheel built from the sdist
    }  # leaves out what a checkout does
    assert names == expected


@pytest.mark.slow
@pytest.mark.sqlite
def test_wheel_metadata_and_contents(built: tuple[Path, Path]) -> None:
    _, wheel = built
    info = f"agentmem_sessions-{VERSION}.dist-info"
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    assert names == {
        *(f"agentmem/{name}" for name in source_files("agentmem")),
        *(f"agentmem/_migrations/{name}" for name in source_files("migrations")),
        *(f"{info}/{name}" for name in ("METADATA", "WHEEL", "RECORD", "entry_points.txt")),
        f"{info}/licenses/LICENSE",
    }
    assert archive.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
    assert "agentmem = agentmem.cli:main" in archive.read(f"{info}/entry_points.txt").decode()

    metadata = HeaderParser().parsestr(archive.read(f"{info}/METADATA").decode())
    assert metadata["Name"] == DIST
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Author"] == "agentmem developers"
    assert metadata["Requires-Python"] == ">=3.11"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert metadata["Keywords"]
    assert {"postgres", "redis", "agents"} <= set(metadata.get_all("Provides-Extra"))
    # No requirement names a distribution called "agentmem": that name is an unrelated project's.
    required = {Requirement(line).name for line in metadata.get_all("Requires-Dist")}
    assert "agentmem" not in required and DIST not in required


@pytest.fixture(scope="module")
def installed_python(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, wheel = built
    names = zipfile.ZipFile(wheel).namelist()
    assert "agentmem/_migrations/env.py" in names
    assert "agentmem/_migrations/versions/0001_sessions_and_messages.py" in names
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{DIST}[postgres] @ {wheel.as_uri()}"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return python


@pytest.mark.slow
@pytest.mark.sqlite
def test_installed_wheel_upgrades_a_new_sqlite_file(installed_python: Path, tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    result = subprocess.run(
        [str(installed_python), "-c", UPGRADE, f"sqlite:///{db}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"at {migrate.head()}" in result.stdout
    assert db.exists()


@pytest.mark.slow
@pytest.mark.sqlite
def test_installed_command_upgrades_and_checks(installed_python: Path, tmp_path: Path) -> None:
    command = installed_python.parent / "agentmem"
    url = f"sqlite:///{tmp_path / 'by_command.db'}"
    for args, expected in (
        (["check", "--url", url], 1),
        (["upgrade", "--url", url], 0),
        (["check", "--url", url], 0),
    ):
        result = subprocess.run(
            [str(command), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == expected, (args, result.stdout, result.stderr)
    result = subprocess.run(
        [str(command), "current", "--url", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.head() in result.stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_installed_wheel_upgrades_postgres(
    installed_python: Path, tmp_path: Path, postgres_database: str
) -> None:
    import uuid

    from sqlalchemy.engine import make_url

    url = make_url(postgres_database.replace("postgresql+asyncpg", "postgresql"))
    prefix = f"w{uuid.uuid4().hex[:8]}_"
    script = UPGRADE.replace("m.upgrade(engine)", f"m.upgrade(engine, table_prefix={prefix!r})")
    script = script.replace("m.current(engine)", f"m.current(engine, table_prefix={prefix!r})")
    result = subprocess.run(
        [str(installed_python), "-c", script, url.render_as_string(hide_password=False)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"at {migrate.head()}" in result.stdout
