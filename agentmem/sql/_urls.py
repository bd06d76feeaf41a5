"""Which async driver agentmem uses for a plain database URL."""

from __future__ import annotations

from sqlalchemy.engine import make_url


def async_url(url: str) -> str:
    """Map a plain URL to agentmem's async driver: ``postgresql://`` to asyncpg,
    ``sqlite://`` to aiosqlite; URLs that name a driver are kept."""
    parsed = make_url(url)
    driver = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}.get(
        parsed.drivername
    )
    if parsed.drivername == "sqlite":
        driver = "sqlite+aiosqlite"
    if driver is None:
        return url
    return parsed.set(drivername=driver).render_as_string(hide_password=False)
