"""The migrations ship inside the wheel: build it, install it in a fresh virtualenv, and upgrade
new databases from there, outside the repo."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

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


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("agentmem-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agentmem/_migrations/env.py" in names
    assert "agentmem/_migrations/versions/0001_sessions_and_messages.py" in names
    env_dir = out / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}[postgres]"],
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
    assert "at 0001" in result.stdout
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
    assert "0001" in result.stdout


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
    assert "at 0001" in result.stdout
