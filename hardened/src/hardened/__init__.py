"""Production hardening for Python web services.

Each guarantee is a small component in its own subpackage (``hardened.http``,
``hardened.stores``, ...); this top level stays small so importing it pulls
in nothing optional.
"""

from hardened.errors import HardenedError

__all__ = ["HardenedError", "__version__"]

__version__ = "0.1.0"
