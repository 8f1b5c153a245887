"""The process's governors: named ones built at start-up, dynamic ones per target, bounded."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING

from hardened.outbound._config import GovernorConfig
from hardened.outbound._governor import Governor

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from hardened.observability import HealthCheck
    from hardened.stores import AtomicScripts

__all__ = ["Governors"]


class Governors:
    """One `Governor` per dependency per process, sharing one store for their caps.

    Named dependencies (``crm``, ``billing``) come from configuration at
    start-up and live as long as the process. Dynamic targets (a webhook
    endpoint per subscriber) get a governor each, built from a template on
    first use, keyed by a hash of the target (the target never reaches a
    metric label or a log line) and kept in an LRU of ``max_dynamic``: the
    least recently used is dropped first, so memory stays bounded however
    many targets appear. A dropped target starts again with a fresh breaker;
    its cap lives on in the store.
    """

    def __init__(self, store: AtomicScripts | None = None, *, max_dynamic: int = 1024) -> None:
        if max_dynamic < 1:
            raise ValueError("max_dynamic must be >= 1")
        self._store = store
        self._named: dict[str, Governor] = {}
        self._dynamic: OrderedDict[str, Governor] = OrderedDict()
        self._max_dynamic = max_dynamic

    @classmethod
    def from_env(
        cls,
        names: Iterable[str],
        store: AtomicScripts | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Governors:
        """A governor per name from ``<NAME>_*`` variables (`GovernorConfig.from_env`)."""
        governors = cls(store)
        for name in names:
            governors.add(GovernorConfig.from_env(name, environ))
        return governors

    def add(self, config: GovernorConfig) -> Governor:
        """Build and keep the governor of a named dependency (one per name)."""
        if config.name in self._named:
            raise ValueError(f"a governor named {config.name!r} exists")
        governor = Governor(config, store=self._store)
        self._named[config.name] = governor
        return governor

    def __getitem__(self, name: str) -> Governor:
        return self._named[name]

    def __iter__(self) -> Iterator[Governor]:
        return iter(self._named.values())

    def __len__(self) -> int:
        return len(self._named)

    def for_target(self, target: str, template: GovernorConfig) -> Governor:
        """The governor of a dynamic ``target`` (a URL, a host), made from ``template``."""
        digest = hashlib.sha256(target.encode()).hexdigest()[:20]
        key = f"{template.name}.{digest}"
        governor = self._dynamic.get(key)
        if governor is not None:
            self._dynamic.move_to_end(key)
            return governor
        governor = Governor(template, store=self._store, key=key)
        self._dynamic[key] = governor
        while len(self._dynamic) > self._max_dynamic:
            self._dynamic.popitem(last=False)
        return governor

    @property
    def dynamic_count(self) -> int:
        return len(self._dynamic)

    def health_checks(self) -> list[HealthCheck]:
        """A non-critical readiness check per named dependency: an open breaker is degraded."""
        return [governor.health_check() for governor in self._named.values()]
