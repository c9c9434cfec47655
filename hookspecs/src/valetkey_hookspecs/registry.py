"""The connector catalog the kernel builds from every plugin's ``valetkey_register_connectors``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .errors import NotFound
from .types import Connector


class ConnectorCatalog:
    """Connectors by slug, in registration order; a later plugin may not silently replace one."""

    def __init__(self, connectors: Iterable[Connector] = ()) -> None:
        self._by_slug: dict[str, Connector] = {c.slug: c for c in connectors}

    def get(self, slug: str) -> Connector:
        """The connector, or ``NotFound`` naming the known slugs' count."""
        try:
            return self._by_slug[slug]
        except KeyError:
            raise NotFound(
                f"unknown connector {slug!r} ({len(self._by_slug)} known; "
                "see 'valetkey connectors list')"
            ) from None

    def list(self) -> list[Connector]:
        """Every connector, sorted by slug."""
        return sorted(self._by_slug.values(), key=lambda c: c.slug)

    def __contains__(self, slug: object) -> bool:
        return slug in self._by_slug

    def __iter__(self) -> Iterator[Connector]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._by_slug)
