"""A FastAPI app that keeps one conversation per user with ``SQLAlchemySession`` on the app's
own engine (PostgreSQL in production, SQLite in development).

    DATABASE_URL=postgresql+asyncpg://app@db/app uvicorn fastapi_app:app   # from examples/

The schema is agentmem's Alembic migrations, applied at startup here (in a real deploy:
``agentmem upgrade --url ...`` or ``alembic upgrade head`` before the app starts).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from _model import example_model
from agents import Agent, Runner
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

from agentmem import SQLAlchemySession, migrate

engine = create_async_engine(os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///app.db"))
agent = Agent(name="Assistant", instructions="Reply very concisely.", model=example_model())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await migrate.upgrade(engine)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


class Message(BaseModel):
    text: str


class Reply(BaseModel):
    reply: str
    items: int


def conversation(user_id: str) -> SQLAlchemySession:
    """The user's conversation: a cheap object per request, on the app's one engine."""
    return SQLAlchemySession(engine, f"user:{user_id}")


@app.post("/users/{user_id}/messages")
async def send(user_id: str, message: Message) -> Reply:
    async with conversation(user_id) as session:
        result = await Runner.run(agent, message.text, session=session)
        return Reply(reply=str(result.final_output), items=len(await session.get_items()))


@app.get("/users/{user_id}/messages")
async def history(user_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    async with conversation(user_id) as session:
        return await session.get_items(limit)


@app.delete("/users/{user_id}/messages", status_code=204)
async def forget(user_id: str) -> None:
    async with conversation(user_id) as session:
        await session.clear_session()
