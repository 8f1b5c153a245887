"""The one wording of "this module needs an optional extra".

`hardened` installs bare with the HTTP guards and memory stores; Redis,
SQLAlchemy, FastAPI and the password/token libraries come with extras. A
module that needs one imports it inside ``try`` and raises this, so the
error names the command that fixes it instead of a bare ``No module named``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["lazy_exports", "missing_extra"]


def missing_extra(module: str, *extras: str) -> ImportError:
    """An ImportError naming the pip command of each extra that provides ``module``."""
    commands = " or ".join(f"pip install 'hardened[{extra}]'" for extra in extras)
    return ImportError(f"{module} needs an optional dependency: {commands}")


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A package ``__getattr__`` importing each name's submodule (``exports``) on first use.

    Keeps the package importable without the extra its heavier submodules need;
    such a submodule's own guard names the extra when it is missing.
    """

    def load(name: str) -> Any:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{submodule}"), name)

    return load
