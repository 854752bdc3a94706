"""The deployment's sales table as the commands and the comparables page read it, with plain
pyiceberg (no Dagster import): they answer in well under two seconds. The one reader of the table
outside the pipeline's steps."""

from __future__ import annotations

import contextlib
import threading

from pyiceberg.catalog import load_catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import And, BooleanExpression, EqualTo, Reference
from pyiceberg.expressions.literals import literal

from smartgo_analytics.core.sales_table import IDENTIFIER
from smartgo_analytics.deployment import this_deployment

NOT_INDEXED_YET = "its sale is not in the index yet (materialise similarity_index)"


@contextlib.contextmanager
def deployment_catalog():
    """The deployment's Iceberg catalog for the block: the local stack's (with its PostgreSQL
    started for the block when the stack is not running), or the configured one."""
    with this_deployment().catalog_properties() as properties:
        # Plain pyiceberg with the deployment's properties, as the `iceberg` resource loads it.
        yield load_catalog("smartgo", **properties)


def no_vector_reason(catalog, product_id: str) -> str | None:
    """Why a sold product has no vector, from the table; None when the table has no such sale."""
    table = _sales_table(catalog)
    if table is None:
        return None
    errors = _scan(table, product_id, None, ("embedding_error",)).column("embedding_error")
    if not len(errors):
        return None
    return errors.to_pylist()[-1] or NOT_INDEXED_YET


def why_no_vector(product_id: str) -> str | None:
    """Why a sold product has no vector, from the deployment's table (None: no such sale)."""
    with deployment_catalog() as catalog:
        return no_vector_reason(catalog, product_id)


def sale_rows(catalog, product_id: str, tenant: str | None) -> list[dict]:
    """The table's rows of a product, every column but its vector, as pyarrow gives them."""
    table = _sales_table(catalog)
    if table is None:
        return []
    names = tuple(f.name for f in table.schema().fields if f.name != "embedding_vector")
    return _scan(table, product_id, tenant, names).to_pylist()


def _sales_table(catalog):
    try:
        return catalog.load_table(IDENTIFIER)
    except NoSuchTableError:
        return None


def _scan(table, product_id: str, tenant: str | None, columns: tuple[str, ...]):
    where: BooleanExpression = EqualTo(term=Reference("product_id"), value=literal(product_id))
    if tenant:
        where = And(where, EqualTo(term=Reference("tenant_id"), value=literal(tenant)))
    return table.scan(row_filter=where, selected_fields=columns).to_arrow()


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
