"""A day of embedding results: what can be reused, how the results are counted, and the rows they
become in the Iceberg table. Plain data in, plain data out; the assets read and write."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from smartgo_analytics.core import sales_table

# Marks a sale whose image URL an earlier sale of the day has: it is downloaded and copied where it
# is, and its vector is the earlier sale's, filled in when the results are merged.
DEFERRED = "embedding_deferred"
PREVIEW_COLUMNS = ["product_id", "tenant_id", "category", "sold_price", "season", "embedding_error"]


def usable_images(day: pa.Table | None, model_id: str, dimension: int) -> frozenset[str]:
    """The images (sha256) the day's rows hold a vector of, from this model and of this length:
    a row has its vector exactly when it has no error, so the vectors need not be read."""
    if day is None:
        return frozenset()
    usable = pc.and_(
        pc.and_(
            pc.equal(day.column("embedding_model"), model_id),
            pc.equal(day.column("embedding_dimension"), dimension),
        ),
        pc.is_null(day.column("embedding_error")),
    )
    return frozenset(day.column("image_sha256").filter(usable).drop_null().to_pylist())


@dataclass(frozen=True)
class Previous:
    """The last run's download of a sale's image, whose vector the table holds: asked for again
    with its ETag, an unchanged image is neither downloaded nor embedded again."""

    image_etag: str
    image_sha256: str
    image_s3_key: str


@dataclass(frozen=True)
class Sale:
    """A sale as the embedding step takes it: its image's URL, the last run's download of that
    image (None: download it), and whether another sale of the day with the same URL embeds it
    (`deferred`: this one only downloads and copies it)."""

    product_id: str
    tenant_id: str
    image_url: str
    before: Previous | None = None
    deferred: bool = False


def previous_downloads(rows: Iterable[dict], usable: frozenset[str]) -> dict[tuple, Previous]:
    """The last run's downloads of the day whose vectors the table holds, by (product, URL)."""
    return {
        (r["product_id"], r["image_url"]): Previous(
            r["image_etag"], r["image_sha256"], r["image_s3_key"]
        )
        for r in rows
        if r["image_etag"] and r["image_sha256"] in usable
    }


def reason_class(error: str) -> str:
    """A reason without the per-sale detail, for the histogram: "image download failed: too large"
    for every "image download failed: too large: 11534336 bytes declared"."""
    return ": ".join(error.split(" (after")[0].split(": ")[:2])


@dataclass
class EmbeddingTally:
    """What a day's embedding results add up to, counted as they stream past."""

    dimension: int
    sales: int = 0
    embedded: int = 0
    reused: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    lengths: Counter[int] = field(default_factory=Counter)
    error_examples: list[dict] = field(default_factory=list)

    def add(self, result: dict) -> None:
        self.sales += 1
        if result["embedding_error"]:
            self.reasons[reason_class(result["embedding_error"])] += 1
            if len(self.error_examples) < 5:
                self.error_examples.append(result)
        elif result["embedding_reused"]:  # a stored vector, of the configured length
            self.embedded += 1
            self.reused += 1
            self.lengths[self.dimension] += 1
        else:
            self.embedded += 1
            self.lengths[len(result["embedding_vector"])] += 1

    @property
    def errors(self) -> int:
        return self.sales - self.embedded


@dataclass(frozen=True)
class RowCount:
    """Rows counted: how many, how many with an error, the first 10 errors and 5 rows shown."""

    rows: int = 0
    with_error: int = 0
    first_errors: tuple[str, ...] = ()
    preview: tuple[dict, ...] = ()

    @classmethod
    def of(cls, rows: pa.Table, shown: bool = True) -> RowCount:
        """The rows counted, and the first 5 of them kept to be shown when `shown`."""
        errors = tuple(e for e in rows.column("embedding_error").to_pylist() if e)
        shown_rows = rows.select(PREVIEW_COLUMNS).slice(0, 5).to_pylist() if shown else []
        return cls(rows.num_rows, len(errors), errors[:10], tuple(shown_rows))

    def __add__(self, other: RowCount) -> RowCount:
        return RowCount(
            self.rows + other.rows,
            self.with_error + other.with_error,
            (self.first_errors + other.first_errors)[:10],
            self.preview or other.preview,
        )


@dataclass
class DayRows:
    """The Iceberg rows of a day, batch by batch, counted for the run's metadata and the export
    progress record."""

    sales: pa.Table
    dimension: int
    ingested_at: datetime
    hemisphere: str
    count: RowCount = field(default_factory=lambda: RowCount())

    @property
    def rows(self) -> int:
        return self.count.rows

    @property
    def with_error(self) -> int:
        return self.count.with_error

    @property
    def first_errors(self) -> list[str]:
        return list(self.count.first_errors)

    @property
    def preview(self) -> list[dict]:
        return list(self.count.preview)

    def rows_of(self, sales: pa.Table, embeddings: pa.Table) -> pa.Table:
        return sales_table.sales_rows(
            sales, embeddings, self.dimension, self.ingested_at, self.hemisphere
        )

    def counted(self, rows: pa.Table) -> pa.Table:
        """The rows, their count added to the day's."""
        self.count = self.count + RowCount.of(rows, shown=not self.count.preview)
        return rows

    def batches(
        self,
        embeddings: Iterable[pa.RecordBatch],
        reused_vectors: Callable[[list[str]], dict],
    ) -> Iterator[pa.Table]:
        """The rows, one batch of embeddings at a time (they are in the sales' order): each joined
        with its slice of the sales, its reused images' vectors filled in by `reused_vectors`."""
        offset = 0
        for batch in embeddings:
            results = pa.Table.from_batches([batch])
            wanted = results.filter(results.column("embedding_reused")).column("image_sha256")
            known = reused_vectors(wanted.drop_null().to_pylist()) if len(wanted) else {}
            results = sales_table.with_reused_vectors(results, known)
            yield self.counted(self.rows_of(self.sales.slice(offset, batch.num_rows), results))
            offset += batch.num_rows
        if offset < self.sales.num_rows:  # sales without embeddings are still written
            empty = sales_table.EMBEDDINGS_SCHEMA.empty_table()
            yield self.counted(self.rows_of(self.sales.slice(offset), empty))

    def if_unchanged(
        self, results: pa.Table, existing: Callable[[], pa.Table | None]
    ) -> pa.Table | None:
        """The day's rows if the table holds them already (read by `existing`, without vectors, only
        when needed): no
        vector among `results` (read without theirs) computed afresh, a reused one being the
        stored one for the same image and model, and every other column equal. None otherwise."""
        vector = sales_table.EMBEDDINGS_SCHEMA.field("embedding_vector")
        afresh = pc.and_(
            pc.is_null(results.column("embedding_error")),
            pc.invert(results.column("embedding_reused")),
        )
        if results.num_rows != self.sales.num_rows or pc.any(afresh).as_py():
            return None
        held = existing()
        if held is None:
            return None
        results = results.add_column(
            sales_table.EMBEDDINGS_SCHEMA.get_field_index(vector.name),
            vector,
            pa.nulls(results.num_rows, vector.type),
        )
        rows = self.rows_of(self.sales, results)
        return rows if sales_table.same_rows(rows, held) else None


def write_results(
    results: Iterable[dict],
    path: str,
    batch_rows: int,
    dimension: int,
    on_progress: Callable[[int], None] = lambda n: None,
) -> EmbeddingTally:
    """Stream the results to a Parquet file, `batch_rows` at a time, and count them (against the
    vectors' expected `dimension`): a day of any size is never held in memory at once."""
    tally = EmbeddingTally(dimension)
    pending: list[dict] = []
    with pq.ParquetWriter(
        path, sales_table.EMBEDDINGS_SCHEMA, **sales_table.EMBEDDINGS_PARQUET_OPTIONS
    ) as writer:
        for result in results:
            tally.add(result)
            pending.append(result)
            if len(pending) == batch_rows:
                writer.write_batch(sales_table.embeddings_batch(pending))
                pending = []
            if tally.sales % 1000 == 0:
                on_progress(tally.sales)
        if pending:
            writer.write_batch(sales_table.embeddings_batch(pending))
    return tally


class VectorLookup(Protocol):
    """Vectors by image sha256: a mapping, or the table's KnownVectors spooled to disk."""

    def __contains__(self, sha: object) -> bool: ...

    def __getitem__(self, sha: str) -> np.ndarray: ...


@dataclass
class ReusedVectors:
    """The vectors of a day's reused images: `stored` (the image vectors' lookup) or, for an image
    embedded before that store existed, `older` (the day's rows in the table, read once if need
    be), which are then handed to `store` so the next lookup finds them."""

    stored: Callable[[set[str]], dict]
    older: Callable[[], VectorLookup]
    store: Callable[[dict], None]
    _older: VectorLookup | None = field(default=None, init=False)

    def __call__(self, shas: list[str]) -> dict[str, np.ndarray]:
        wanted = set(shas)
        found = self.stored(wanted)
        missing = wanted - found.keys()
        if missing:
            if self._older is None:
                self._older = self.older()
            recovered = {sha: self._older[sha] for sha in missing if sha in self._older}
            self.store(recovered)
            found |= recovered
        return found

    def __enter__(self) -> ReusedVectors:
        return self

    def __exit__(self, *exc) -> None:
        close = getattr(self._older, "__exit__", None)
        if close is not None:
            close(*exc)


def mark_deferred(sales: list[Sale]) -> tuple[list[Sale], set[str]]:
    """The sales with every one but the first of each image URL `deferred`, and the URLs that have
    such followers: a URL's picture is embedded once, by its first sale, and the later sales, in
    whatever worker, only download and copy it."""
    first = {sale.image_url: n for n, sale in reversed(list(enumerate(sales)))}
    marked = [
        sale if first[sale.image_url] == n else replace(sale, deferred=True)
        for n, sale in enumerate(sales)
    ]
    counts = Counter(sale.image_url for sale in sales)
    return marked, {url for url, n in counts.items() if n > 1}


def from_first_sale(result: dict, first: dict | None) -> dict:
    """A deferred sale's result completed with the vector (or error) of its URL's first sale."""
    if first is not None and first["image_sha256"] == result["image_sha256"]:
        if first["embedding_vector"] is not None or first["embedding_reused"]:
            return result | {
                "embedding_vector": first["embedding_vector"],
                "embedding_reused": first["embedding_reused"],
            }
        if first["embedding_error"]:
            return result | {"embedding_error": first["embedding_error"]}
    return result | {
        "embedding_error": "embedding failed: the image's first sale of the day had other bytes "
        "or none; it is embedded on the next run"
    }
