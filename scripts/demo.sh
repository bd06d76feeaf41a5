#!/usr/bin/env bash
# The main job: a three-turn agent conversation through the OpenAI Agents SDK Runner, stored in
# ./agentmem.db; run it again to continue the conversation. Uses OpenAI when OPENAI_API_KEY is set,
# an offline scripted model otherwise. Installs agentmem-sessions[agents] into .venv first.
# Extra arguments go to `agentmem demo` (e.g. --url postgresql://..., or your own questions).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" agents
exec .venv/bin/agentmem demo "$@"
