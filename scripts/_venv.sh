# Sourced by the scripts: make .venv (Python 3.11+) and install agentmem into it with the extras
# given as $1. Reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "agentmem needs Python 3.11+"'
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.agentmem-$1-$(cksum < pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # A .venv from before the rename holds this project as "agentmem" (on PyPI an unrelated project's
  # name): remove it first, as both install the same files.
  if .venv/bin/python -m pip show -q agentmem 2>/dev/null; then
    .venv/bin/python -m pip uninstall -q -y agentmem
  fi
  .venv/bin/python -m pip install -q -e ".[$1]"
  touch "$stamp"
fi
