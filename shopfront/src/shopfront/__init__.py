"""shopfront: the reference service built on hardened's public API."""

__all__ = ["__version__"]

__version__ = "0.1.0"
