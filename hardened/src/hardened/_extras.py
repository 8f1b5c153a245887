"""The one wording of "this module needs an optional extra".

`hardened` installs bare with the HTTP guards and memory stores; Redis,
SQLAlchemy, FastAPI and the password/token libraries come with extras. A
module that needs one imports it inside ``try`` and raises this, so the
error names the command that fixes it instead of a bare ``No module named``.
"""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(module: str, *extras: str) -> ImportError:
    """An ImportError naming the pip command of each extra that provides ``module``."""
    commands = " or ".join(f"pip install 'hardened[{extra}]'" for extra in extras)
    return ImportError(f"{module} needs an optional dependency: {commands}")
