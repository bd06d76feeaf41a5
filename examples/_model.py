"""The model of the examples: OpenAI's when ``OPENAI_API_KEY`` is set, else agentmem's offline
demo model (deterministic, no network), which answers the documentation's questions from the
conversation history it is given."""

from __future__ import annotations

import os

from agents import Model, set_tracing_disabled


def example_model() -> Model | None:
    """``None`` (the SDK's default OpenAI model) with an API key, else the offline model."""
    if os.environ.get("OPENAI_API_KEY"):
        return None
    from agentmem.cli._demo import OfflineModel

    set_tracing_disabled(True)  # nothing to export traces to without a key
    return OfflineModel()
