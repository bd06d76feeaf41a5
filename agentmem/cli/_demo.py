"""``agentmem demo``: the documentation's three-turn conversation through the real ``Runner``.

Without ``OPENAI_API_KEY`` the agent runs on :class:`OfflineModel`, a deterministic model that
answers the documentation's questions from the conversation it is given (so its answers show
what the session remembered) and needs no network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agents import Agent, RunConfig, Runner
from agents.items import ModelResponse
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message

from agentmem.session import Session

__all__ = [
    "DOCS_QUESTIONS",
    "RECAP_QUESTION",
    "OfflineModel",
    "Turn",
    "build_agent",
    "offline_answer",
    "run_turns",
]

DOCS_QUESTIONS = [
    "What city is the Golden Gate Bridge in?",
    "What state is it in?",
    "What's the population?",
]
RECAP_QUESTION = "What have we talked about so far?"

INSTRUCTIONS = "Reply very concisely."


def _text(item: Any) -> str:
    """The text of a user or assistant message item ("" for other items)."""
    if not isinstance(item, dict):
        return ""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict)
        )  # output_text / input_text parts
    return ""


def _mentions(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.IGNORECASE) is not None


def offline_answer(conversation: list[Any]) -> str:
    """The offline model's reply to the last user message of ``conversation``.

    It resolves "it" from the earlier turns it is given, so it only knows which place is meant
    when the session supplied the history.
    """
    user_turns = [_text(item) for item in conversation if _is_user(item)]
    question = user_turns[-1] if user_turns else ""
    earlier = " ".join(_text(item) for item in conversation[:-1])
    knows_place = _mentions(r"golden gate|san francisco", earlier)
    if _mentions(r"golden gate", question):
        return "San Francisco."
    if _mentions(r"\bstate\b", question):
        return "California." if knows_place else "Which place do you mean? I don't know yet."
    if _mentions(r"population", question):
        if knows_place:
            return "About 800,000 people live in San Francisco."
        return "The population of which place? I don't know yet."
    arithmetic = _ARITHMETIC.search(question)
    if arithmetic:
        left, operator, right = arithmetic.groups()
        return _calculate(int(left), operator, int(right))
    if _mentions(r"so far|talked about|what did i ask|recap", question):
        asked = user_turns[:-1]
        if not asked:
            return "Nothing yet: this is the start of our conversation."
        listed = "; ".join(f"{n}. {text}" for n, text in enumerate(asked, 1))
        return f"You asked {len(asked)} question(s): {listed}"
    return (
        "I am agentmem's offline demo model: I only know the demo's questions. "
        f"This conversation holds {len(user_turns)} question(s) of yours."
    )


_ARITHMETIC = re.compile(r"(-?\d{1,9})\s*([-+*x\u00d7/])\s*(-?\d{1,9})")


def _calculate(left: int, operator: str, right: int) -> str:
    if operator == "+":
        return f"{left + right}."
    if operator == "-":
        return f"{left - right}."
    if operator == "/":
        return "I can't divide by zero." if right == 0 else f"{left / right:g}."
    return f"{left * right}."


def _is_user(item: Any) -> bool:
    return isinstance(item, dict) and item.get("role") == "user"


def _respond(call: ModelCall) -> list[Any]:
    conversation = call.input if isinstance(call.input, list) else [call.input]
    return [assistant_message(offline_answer(conversation), item_id="msg_offline_demo")]


class OfflineModel(ScriptedModel):
    """A deterministic, offline ``Model``: every call is answered by :func:`offline_answer`."""

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.enqueue(ModelStep.respond(_respond))
        return await super().get_response(*args, **kwargs)


def build_agent(*, offline: bool) -> tuple[Agent[Any], RunConfig]:
    """The demo's agent: OpenAI's default model, or :class:`OfflineModel` (tracing off)."""
    if offline:
        agent: Agent[Any] = Agent(name="Assistant", instructions=INSTRUCTIONS, model=OfflineModel())
        return agent, RunConfig(tracing_disabled=True)
    return Agent(name="Assistant", instructions=INSTRUCTIONS), RunConfig()


@dataclass(frozen=True)
class Turn:
    """One question and the agent's answer."""

    question: str
    answer: str


async def run_turns(session: Session, questions: list[str], *, offline: bool) -> list[Turn]:
    """Ask ``questions`` one turn at a time through ``Runner.run`` on ``session``."""
    agent, config = build_agent(offline=offline)
    turns = []
    for question in questions:
        result = await Runner.run(agent, question, session=session, run_config=config)
        turns.append(Turn(question, str(result.final_output)))
    return turns
