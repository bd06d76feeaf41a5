"""``python -m agentmem.cli``."""

from agentmem.cli.main import main

main()
