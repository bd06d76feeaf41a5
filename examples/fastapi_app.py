"""A FastAPI app that keeps one conversation per user with ``SQLAlchemySession`` on the app's
own engine (PostgreSQL in production, SQLite in development).

    pip install "agentmem-sessions[postgres,agents]" fastapi uvicorn
    DATABASE_URL=postgresql+asyncpg://app@db/app uvicorn fastapi_app:app   # from examples/

Bad input is answered with a 422 and FastAPI's usual body (``{"detail": [{"loc": ..., "msg":
...}]}``): a negative or oversized ``limit``, a user id that cannot be a session id, a body that is
not ``{"text": "..."}``.

The schema is agentmem's Alembic migrations, applied at startup here (in a real deploy:
``agentmem upgrade --url ...`` or ``alembic upgrade head`` before the app starts).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from _model import example_model
from agents import Agent, Runner
from fastapi import FastAPI, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import create_async_engine

from agentmem import SQLAlchemySession, migrate
from agentmem.session import MAX_SESSION_ID_LENGTH

engine = create_async_engine(os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///app.db"))
agent = Agent(name="Assistant", instructions="Reply very concisely.", model=example_model())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await migrate.upgrade(engine)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


PREFIX = "user:"
UserId = Annotated[str, Path(min_length=1, max_length=MAX_SESSION_ID_LENGTH - len(PREFIX))]
Limit = Annotated[int | None, Query(ge=0, le=10_000, description="only the newest N items")]


class Message(BaseModel):
    text: str = Field(min_length=1)


class Reply(BaseModel):
    reply: str
    items: int


def conversation(user_id: str) -> SQLAlchemySession:
    """The user's conversation: a cheap object per request, on the app's one engine."""
    try:
        return SQLAlchemySession(engine, f"{PREFIX}{user_id}")
    except ValueError as exc:  # the id holds what no session id may (NUL): the client's error
        error = {"type": "value_error", "loc": ("path", "user_id"), "msg": str(exc)}
        raise RequestValidationError([{**error, "input": user_id}]) from None


@app.post("/users/{user_id}/messages")
async def send(user_id: UserId, message: Message) -> Reply:
    async with conversation(user_id) as session:
        result = await Runner.run(agent, message.text, session=session)
        return Reply(reply=str(result.final_output), items=len(await session.get_items()))


@app.get("/users/{user_id}/messages")
async def history(user_id: UserId, limit: Limit = None) -> list[dict[str, Any]]:
    async with conversation(user_id) as session:
        return await session.get_items(limit)


@app.delete("/users/{user_id}/messages", status_code=204)
async def forget(user_id: UserId) -> None:
    async with conversation(user_id) as session:
        await session.clear_session()
