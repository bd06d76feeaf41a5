"""Optional-dependency helpers."""

from __future__ import annotations


class MissingDependencyError(ImportError):
    """An optional dependency of agentmem is not installed; the message says what to install."""


def missing(extra: str, package: str) -> MissingDependencyError:
    """Build the error for a missing optional ``package`` that ``agentmem[extra]`` installs."""
    return MissingDependencyError(
        f'{package} is required for this feature: pip install "agentmem-sessions[{extra}]"'
    )
