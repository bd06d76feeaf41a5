#!/usr/bin/env bash
# The whole test suite: installs everything into .venv, then lint, types and tests.
# PostgreSQL and Redis tests use AGENTMEM_TEST_POSTGRES_URL / AGENTMEM_TEST_REDIS_URL (defaults:
# the local servers); without a server they skip loudly, except under CI=true where they fail.
# Extra arguments go to pytest (e.g. `-m sqlite` for the tests that need no server).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
