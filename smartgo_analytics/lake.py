"""The deployment's Iceberg catalog, opened with plain pyiceberg (no Dagster import): for the
commands and the comparables page, which answer in well under two seconds."""

from __future__ import annotations

import contextlib
import threading

from smartgo_analytics.settings import ConfigurationError, settings


@contextlib.contextmanager
def deployment_catalog():
    """The deployment's Iceberg catalog for the block: the local stack's (with its PostgreSQL
    started for the block when the stack is not running), or the configured one."""
    from pyiceberg.catalog import load_catalog

    config = settings()
    if config.deployment == "local":
        from smartgo_analytics.local.stack import local_catalog_properties

        with local_catalog_properties() as properties:
            yield load_catalog("smartgo", **properties)
        return
    if not config.catalog_properties.get("type"):
        raise ConfigurationError("ICEBERG_CATALOG_TYPE is not set (sql, rest or glue)")
    # Plain pyiceberg with the deployment's properties, as the `iceberg` resource loads it.
    yield load_catalog("smartgo", **config.catalog_properties)


def why_no_vector(product_id: str) -> str | None:
    """Why a sold product has no vector, from the deployment's table (None: no such sale)."""
    from smartgo_analytics.comparables import no_vector_reason

    with deployment_catalog() as catalog:
        return no_vector_reason(catalog, product_id)


class KeptCatalog:
    """The deployment's catalog, opened on first use and kept until `close` (locally, the stack's
    PostgreSQL started once, when the stack is not running), for a reader that lives long and
    answers many people at once, such as the comparables page. Called, it gives a context manager
    of the catalog, as `deployment_catalog` does."""

    def __init__(self):
        self._opened = contextlib.ExitStack()
        self._catalog = None
        self._lock = threading.Lock()

    def __call__(self):
        return contextlib.nullcontext(self.catalog())

    def catalog(self):
        with self._lock:
            if self._catalog is None:
                self._catalog = self._opened.enter_context(deployment_catalog())
            return self._catalog

    def close(self) -> None:
        with self._lock:
            self._catalog = None
            self._opened.close()
