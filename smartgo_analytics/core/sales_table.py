"""The Iceberg table `pricing_intelligence.smartgo_sales`: its schema, partition spec and rows."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import NullOrder, SortDirection, SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    DoubleType,
    FloatType,
    IntegerType,
    ListType,
    NestedField,
    StringType,
    TimestamptzType,
)

from smartgo_analytics.core.sales import quarter_of, season_of
from smartgo_analytics.layout import SALES_TABLE

IDENTIFIER = SALES_TABLE
SOURCE_SYSTEM = "smartgo"

_COLUMNS = (
    ("product_id", StringType(), True),
    ("tenant_id", StringType(), True),
    ("category", StringType(), False),
    ("brand", StringType(), False),
    ("condition", StringType(), False),
    ("sold_price", DoubleType(), True),
    ("sold_date", TimestamptzType(), True),
    ("season", StringType(), True),
    ("quarter", StringType(), True),
    ("year", IntegerType(), True),
    ("month", IntegerType(), True),
    ("image_s3_key", StringType(), False),
    ("image_sha256", StringType(), False),
    ("embedding_id", StringType(), True),
    ("embedding_model", StringType(), False),
    ("embedding_dimension", IntegerType(), True),
    ("embedding_vector", None, False),
    ("embedding_error", StringType(), False),
    ("source_system", StringType(), True),
    ("ingestion_timestamp", TimestamptzType(), True),
)
# What each column holds, for the Dagster catalog (`dagster/column_schema`).
DESCRIPTIONS = {
    "product_id": "SmartGo product id (the sale)",
    "tenant_id": "the tenant (store group) that sold it",
    "category": "product category",
    "brand": "brand",
    "condition": "condition grade",
    "sold_price": "sold price, in the tenant's currency",
    "sold_date": "when it sold (UTC)",
    "season": "season of the sold date (SEASON_HEMISPHERE)",
    "quarter": "quarter of the sold date, Q1-Q4",
    "year": "year of the sold date (partition)",
    "month": "month of the sold date (partition)",
    "image_s3_key": "the image copy in the object store",
    "image_sha256": "sha256 of the downloaded image",
    "embedding_id": "the vector's id: product and model",
    "embedding_model": "model that made the vector",
    "embedding_dimension": "length of the vector",
    "embedding_vector": "the image's vector (null: see embedding_error)",
    "embedding_error": "why the sale has no vector",
    "source_system": "where the sale came from",
    "ingestion_timestamp": "when the row was written",
}
# pyiceberg numbers nested fields after the top-level ones when it creates a table.
_VECTOR_ELEMENT_ID = len(_COLUMNS) + 1

SCHEMA = Schema(
    *(
        NestedField(
            field_id=index,
            name=name,
            field_type=kind
            if kind is not None
            else ListType(
                element_id=_VECTOR_ELEMENT_ID, element_type=FloatType(), element_required=False
            ),
            required=required,
        )
        for index, (name, kind, required) in enumerate(_COLUMNS, start=1)
    )
)
_FIELD_IDS = {name: index for index, (name, _, _) in enumerate(_COLUMNS, start=1)}
PARTITION_SPEC = PartitionSpec(
    *(
        PartitionField(
            source_id=_FIELD_IDS[name], field_id=1000 + n, transform=IdentityTransform(), name=name
        )
        for n, name in enumerate(("tenant_id", "year", "month"))
    )
)
ARROW_SCHEMA = SCHEMA.as_arrow()
# Vectors are most of every file and float noise to a compressor: snappy costs less CPU than zstd for
# the same size, and per-element min/max statistics of a vector help no query; their value and null
# counts tell the index check how many vectors a file holds without reading it. Nor does a dictionary
# of floats: a small dictionary page limit gives up on it early, while the few distinct tenants,
# categories, brands and seasons still fit.
TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "snappy",
    "write.metadata.metrics.column.embedding_vector": "counts",
    "write.parquet.dict-size-bytes": str(64 * 1024),
    # Every commit writes a metadata file: keep the last 20, delete older ones as commits go.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
}

# Rows are clustered by partition (then in time order), so each partition's file is a slice of the
# batch rather than a copy. The table declares the same order, so engines may rely on it.
ROW_ORDER = [
    *((field.name, "ascending") for field in PARTITION_SPEC.fields),
    ("sold_date", "ascending"),
    ("product_id", "ascending"),
]
SORT_ORDER = SortOrder(
    *(
        SortField(
            source_id=_FIELD_IDS[name],
            transform=IdentityTransform(),
            direction=SortDirection.ASC,
            null_order=NullOrder.NULLS_LAST,  # as pyarrow sorts
        )
        for name, _ in ROW_ORDER
    )
)

# What re-materialising a day compares with the rows already in the table: every column but the
# vector (a reused vector is the table's own for the same image and model) and the two that say
# when a row was written.
COMPARED_COLUMNS = [
    name
    for name in ARROW_SCHEMA.names
    if name not in ("embedding_vector", "embedding_id", "ingestion_timestamp")
]


def fingerprint(table: pa.Table, sort_by: tuple[str, ...]) -> str:
    """A digest of the table's rows in `sort_by` order: equal for equal rows, whatever their
    order or batches."""
    table = table.sort_by([(name, "ascending") for name in sort_by])
    digest = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks(), max_chunksize=table.num_rows or None)
    digest.update(sink.getvalue())
    return digest.hexdigest()[:32]


def same_rows(rows: pa.Table, other: pa.Table) -> bool:
    """Whether two tables hold the same rows in COMPARED_COLUMNS, in whatever order."""
    if rows.num_rows != other.num_rows:
        return False
    schema = pa.schema([ARROW_SCHEMA.field(name) for name in COMPARED_COLUMNS])
    order = [(name, "ascending") for name in COMPARED_COLUMNS]
    return (
        rows.select(COMPARED_COLUMNS).cast(schema).sort_by(order).combine_chunks()
        == other.select(COMPARED_COLUMNS).cast(schema).sort_by(order).combine_chunks()
    )


EMBEDDINGS_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("image_s3_key", pa.string()),
        pa.field("image_sha256", pa.string()),
        pa.field("embedding_model", pa.string()),
        # Null where reused: the table's vector for the same image and model stays, and is read
        # back only if the day has to be written again.
        pa.field("embedding_vector", pa.list_(pa.float32())),
        pa.field("embedding_error", pa.string()),
        pa.field("embedding_reused", pa.bool_()),
        # What the next materialisation of the day needs to skip unchanged images.
        pa.field("image_url", pa.string()),
        pa.field("image_etag", pa.string()),
    ]
)
# Parquet writer options for the embeddings: dictionary-encoding float vectors costs most of the
# write (eight times the rest) and saves nothing; the text columns keep their dictionaries.
EMBEDDINGS_PARQUET_OPTIONS = {
    "compression": "zstd",
    "use_dictionary": [name for name in EMBEDDINGS_SCHEMA.names if name != "embedding_vector"],
}
# The embeddings columns that go on into the Iceberg rows.
EMBEDDING_COLUMNS = (
    "image_s3_key",
    "image_sha256",
    "embedding_model",
    "embedding_vector",
    "embedding_error",
)


def vector_array(vectors: list[np.ndarray | None]) -> pa.ListArray:
    """float32 vectors (None: no vector) as one Arrow list array, without Python float lists."""
    present = [v is not None for v in vectors]
    offsets = np.zeros(len(vectors) + 1, dtype=np.int32)
    np.cumsum([len(v) if v is not None else 0 for v in vectors], out=offsets[1:])
    flat = (
        np.concatenate([v for v in vectors if v is not None]).astype(np.float32, copy=False)
        if any(present)
        else np.zeros(0, dtype=np.float32)
    )
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(flat), mask=pa.array([not p for p in present])
    )


def embeddings_batch(results: list[dict]) -> pa.RecordBatch:
    """Per-sale results (vectors as float32 arrays) as one Arrow batch."""
    columns = [
        pa.array([r[name] for r in results], type=EMBEDDINGS_SCHEMA.field(name).type)
        for name in EMBEDDINGS_SCHEMA.names
        if name != "embedding_vector"
    ]
    columns.insert(
        EMBEDDINGS_SCHEMA.names.index("embedding_vector"),
        vector_array([r["embedding_vector"] for r in results]),
    )
    return pa.RecordBatch.from_arrays(columns, schema=EMBEDDINGS_SCHEMA)


REUSED_VECTOR_GONE = "its vector, to be reused, is no longer in the table"


def with_reused_vectors(embeddings: pa.Table, known: Mapping[str, np.ndarray]) -> pa.Table:
    """The embedding results with each reused row's vector (`known`, by image) filled in; a row
    whose vector has left the table since is an error instead."""
    reused = embeddings.column("embedding_reused").to_pylist()
    if not any(reused):
        return embeddings
    column = embeddings.column("embedding_vector").combine_chunks()
    shas = embeddings.column("image_sha256").to_pylist()
    errors = embeddings.column("embedding_error").to_pylist()
    vectors: list[np.ndarray | None] = []
    for index, (was_reused, sha) in enumerate(zip(reused, shas, strict=True)):
        if not was_reused:
            value = column[index]
            vectors.append(value.values.to_numpy(zero_copy_only=False) if value.is_valid else None)
        elif sha in known:
            vectors.append(known[sha])
        else:
            vectors.append(None)
            errors[index] = REUSED_VECTOR_GONE
    for name, values in (
        ("embedding_vector", vector_array(vectors)),
        ("embedding_error", pa.array(errors, pa.string())),
    ):
        index = embeddings.schema.get_field_index(name)
        embeddings = embeddings.set_column(index, embeddings.schema.field(index), values)
    return embeddings


def sales_rows(
    sales: pa.Table,
    embeddings: pa.Table,
    dimension: int,
    ingested_at: datetime,
    hemisphere: str = "northern",
) -> pa.Table:
    """The Iceberg rows of a day: every valid sale, with its embedding or the reason it has none."""
    # Acero cannot join list columns, so look each sale's embedding row up by index instead.
    matches = embeddings.take(
        pc.index_in(sales.column("product_id"), value_set=embeddings.column("product_id"))
    )
    joined = sales
    for name in EMBEDDING_COLUMNS:
        joined = joined.append_column(name, matches.column(name))
    sold_dates = joined.column("sold_date").to_pylist()
    months = [d.month for d in sold_dates]
    epoch_ms = int(ingested_at.timestamp() * 1000)
    product_ids = joined.column("product_id").to_pylist()
    errors = joined.column("embedding_error")
    missing = pc.is_null(joined.column("image_sha256"))
    # A sale with no embeddings row at all was never processed: say so rather than leave it blank.
    errors = pc.if_else(pc.and_(missing, pc.is_null(errors)), "not processed", errors)
    columns = {
        "product_id": joined.column("product_id"),
        "tenant_id": joined.column("tenant_id"),
        "category": joined.column("category"),
        "brand": joined.column("brand"),
        "condition": joined.column("condition"),
        "sold_price": joined.column("sold_price"),
        "sold_date": joined.column("sold_date"),
        "season": pa.array([season_of(m, hemisphere) for m in months], pa.string()),
        "quarter": pa.array([quarter_of(m) for m in months], pa.string()),
        "year": pa.array([d.year for d in sold_dates], pa.int32()),
        "month": pa.array(months, pa.int32()),
        "image_s3_key": joined.column("image_s3_key"),
        "image_sha256": joined.column("image_sha256"),
        "embedding_id": pa.array([f"smartgo-{p}-{epoch_ms}" for p in product_ids], pa.string()),
        "embedding_model": joined.column("embedding_model"),
        "embedding_dimension": pa.array([dimension] * joined.num_rows, pa.int32()),
        "embedding_vector": joined.column("embedding_vector"),
        "embedding_error": errors,
        "source_system": pa.array([SOURCE_SYSTEM] * joined.num_rows, pa.string()),
        "ingestion_timestamp": pa.array(
            [ingested_at] * joined.num_rows, pa.timestamp("us", tz="UTC")
        ),
    }
    table = pa.table({name: columns[name] for name in ARROW_SCHEMA.names})
    return table.cast(ARROW_SCHEMA).sort_by(ROW_ORDER)
