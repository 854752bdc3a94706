"""Re-embedding a range of history with a model: the table's images whose vector of that model
and length is not kept yet, embedded by Bedrock batch inference jobs when they are many
(`BEDROCK_BATCH_MIN_IMAGES`), on demand otherwise, and kept in the image-vector cache; a backfill
of those days then reuses every vector, no on-demand call, at the batch price. And a model in
shadow: a day or a range put in its own index from the table's rows and the kept vectors, and
compared with the serving model's."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster import Config
from pydantic import Field

from smartgo_analytics.core.batch import record_id, records_jsonl
from smartgo_analytics.core.imaging import BadImage, prepare_for
from smartgo_analytics.core.models import model_named
from smartgo_analytics.core.models.base import EmbeddingModel
from smartgo_analytics.embedding.workers import settings_of
from smartgo_analytics.layout import index_space, legacy_index_tenants
from smartgo_analytics.resources.bedrock_batch import BatchJobFailed, BedrockBatch
from smartgo_analytics.resources.dynamodb import ImageVectors
from smartgo_analytics.resources.embeddings import EmbeddingError
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.settings import settings
from smartgo_analytics.similarity.compare import Comparison, compare_tenant
from smartgo_analytics.similarity.manifest import Manifest
from smartgo_analytics.similarity.reader import IndexReader
from smartgo_analytics.similarity.store import READ_COLUMNS, commit_tenants, spool_day


@dataclass
class Reembedded:
    images: int = 0  # the range's distinct images with a copy
    kept_already: int = 0  # of which the cache held a vector of the model and length
    by_batch: int = 0
    on_demand: int = 0
    failed_in_batch: int = 0  # records answered with an error; each is then tried on demand
    errors: dict[str, str] = field(default_factory=dict)  # image sha256 -> why it has no vector
    job_arn: str | None = None
    jobs: list[str] = field(default_factory=list)  # the batch jobs' ARNs, in order

    def metadata(self, model_id: str, batch_price: float, price: float) -> dict:
        return {
            "images": self.images,
            "kept_already": self.kept_already,
            "embedded_by_batch": self.by_batch,
            "embedded_on_demand": self.on_demand,
            "failed_in_batch_then_on_demand": self.failed_in_batch,
            "errors": len(self.errors),
            "estimated_batch_cost_usd": round(self.by_batch * batch_price, 6),
            "estimated_on_demand_cost_usd": round(self.on_demand * price, 6),
            "batch_job": self.job_arn or "none",
            "embedding_model": model_id,
        }


def range_images(iceberg: IcebergCatalog, start: datetime, end: datetime) -> dict[str, str]:
    """The distinct images (sha256 -> the copy's key) of the table's sales in [start, end)."""
    rows = iceberg.read_day(start, end, ("image_sha256", "image_s3_key"))
    if rows is None:
        return {}
    rows = rows.filter(
        pc.and_(pc.is_valid(rows["image_sha256"]), pc.is_valid(rows["image_s3_key"]))
    )
    return dict(
        zip(rows["image_sha256"].to_pylist(), rows["image_s3_key"].to_pylist(), strict=True)
    )


def reembed(
    images: dict[str, str],
    store: ObjectStore,
    embedder,
    vectors: ImageVectors,
    batch: BedrockBatch | None,
    min_batch: int,
    name: str,
    progress: Callable[[dict], None],
) -> Reembedded:
    """Vectors of `embedder`'s model and length for the images the cache lacks, kept in it (on
    demand without a `batch`)."""
    model_id, dimension = embedder.model_id, embedder.dimension
    done = Reembedded(images=len(images))
    kept = vectors.known(model_id, dimension, list(images))
    wanted = {sha: key for sha, key in images.items() if sha not in kept}
    done.kept_already = len(images) - len(wanted)
    if not wanted:
        return done

    def picture(sha: str) -> bytes:
        data = store.get_bytes(store.key_of(wanted[sha]))
        return prepare_for(data, embedder.image_rule).data

    def on_demand(shas: list[str]) -> dict[str, np.ndarray]:
        def one(sha: str) -> tuple[str, np.ndarray | None]:
            try:
                return sha, embedder.embed(picture(sha))
            except (BadImage, EmbeddingError, FileNotFoundError) as error:
                done.errors[sha] = str(error)[:200]
                return sha, None

        with ThreadPoolExecutor(max(1, embedder.max_concurrency)) as pool:
            found = {sha: v for sha, v in pool.map(one, shas) if v is not None}
        done.on_demand += len(found)
        return found

    if batch is None or len(wanted) < min_batch:
        vectors.store(model_id, dimension, on_demand(list(wanted)))
        return done
    batch.require(store)
    try:
        _by_batch(wanted, store, batch, embedder, picture, on_demand, vectors, name, progress, done)
    except BatchJobFailed as error:
        stored = done.by_batch + done.on_demand
        raise BatchJobFailed(
            f"{error}. Kept before it, in the image-vector cache (a run again starts from them): "
            f"{stored} vectors ({done.by_batch} by {len(done.jobs) - 1} earlier jobs, "
            f"{done.on_demand} on demand)"
            if stored
            else f"{error}. Nothing of it was kept: run the job again"
        ) from None
    done.job_arn = ", ".join(done.jobs) or None
    return done


def job_records(left: int, max_records: int, min_records: int) -> int:
    """How many of the `left` records the next job takes: at most `max_records`, and never so
    many that fewer than `min_records` (Bedrock's least a job) would be left for the one after it;
    the last two jobs share what is left then. Fewer than `min_records` left: none (on demand)."""
    if left < min_records:
        return 0
    if left <= max_records:
        return left
    if left - max_records >= min_records:
        return max_records
    return max(min_records, (left + 1) // 2) if left // 2 >= min_records else max_records


def _by_batch(wanted, store, batch, embedder, picture, on_demand, vectors, name, progress, done):
    """Jobs one after another, each within the quota of records and of bytes and above Bedrock's
    least records a job; what is left below it (and what a job answered with an error) on demand."""
    model: EmbeddingModel = embedder.family  # a Bedrock model: batch inference is Bedrock's
    model_id, dimension, shas = embedder.model_id, embedder.dimension, list(wanted)
    while shas:
        take = job_records(len(shas), batch.max_records, batch.min_records)
        if take == 0:
            vectors.store(model_id, dimension, on_demand(shas))
            return
        with tempfile.TemporaryDirectory(prefix="smartgo-batch-") as directory:
            path = Path(directory) / "records.jsonl"
            ids, rest = _write_records(path, shas[:take], picture, model, dimension, batch, done)
            shas = rest + shas[take:]
            if len(ids) < batch.min_records:  # pictures that could not be read left too few
                vectors.store(model_id, dimension, on_demand(list(ids.values())))
                continue
            part = f"{name}-{len(done.jobs) + 1}"
            job = batch.submit(store, model, part, path)
        done.jobs.append(job.arn)
        batch.wait(job, progress)
        answers = batch.answers(store, job, model, dimension)
        for key in store.list_keys(f"{batch.prefix}{part}/"):  # its files
            store.delete(key)
        found = {ids[rid]: vector for rid, vector in answers.vectors.items() if rid in ids}
        done.by_batch += len(found)
        vectors.store(model_id, dimension, found)
        # A record answered with an error, or not at all, is tried once more on demand.
        again = [sha for rid, sha in ids.items() if rid not in answers.vectors]
        done.failed_in_batch += len(again)
        vectors.store(model_id, dimension, on_demand(again))


def _write_records(path: Path, shas: list[str], picture, model, dimension, batch, done):
    """The first of `shas` as one job's records in `path`, up to the job's quota of records and
    of bytes: their record ids (-> sha256), and the shas left for the next job."""
    ids: dict[str, str] = {}
    size = 0
    with path.open("wb") as out:
        for n, sha in enumerate(shas):
            try:
                line = records_jsonl(
                    [(record_id(len(ids) + 1), model.body(picture(sha), dimension))]
                )
            except (BadImage, ValueError, FileNotFoundError) as error:
                done.errors[sha] = str(error)[:200]
                continue
            if ids and (len(ids) >= batch.max_records or size + len(line) > batch.max_bytes):
                return ids, shas[n:]
            ids[record_id(len(ids) + 1)] = sha
            out.write(line)
            size += len(line)
    return ids, []


def with_kept_vectors(batch: pa.RecordBatch, vectors: ImageVectors, model_id: str, dimension: int):
    """The table's rows with the model's vectors of their images from the cache in place of their
    own (a row whose image has none there: no vector)."""
    shas = batch.column("image_sha256").to_pylist()
    found = vectors.vectors(model_id, dimension, [sha for sha in shas if sha])
    kept = [found.get(sha) if sha else None for sha in shas]
    column = pa.array([None if v is None else v.tolist() for v in kept], pa.list_(pa.float32()))
    models = pa.array([None if v is None else model_id for v in kept], pa.string())
    names = batch.schema.names
    arrays = [
        column
        if name == "embedding_vector"
        else models
        if name == "embedding_model"
        else batch.column(name)
        for name in names
    ]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def shadow_index(
    iceberg: IcebergCatalog,
    store: ObjectStore,
    vectors: ImageVectors,
    model_id: str,
    dimension: int,
    days: list[date],
) -> dict[str, int]:
    """Each day of the range put in the model's own index from the table's rows and the cache's
    vectors, the table and the configured model's index left as they are: the other model can be
    compared (`compare_models_job`) while the configured one serves. The vectors indexed a day."""
    indexed = {}
    for day in days:
        start = datetime.combine(day, datetime.min.time(), UTC)
        with tempfile.TemporaryDirectory(prefix="smartgo-shadow-") as directory:
            batches = iceberg.scan_day_files(start, start + timedelta(days=1), READ_COLUMNS)
            shadowed = (with_kept_vectors(b, vectors, model_id, dimension) for b in batches)
            spooled = spool_day(shadowed, dimension, model_id, Path(directory))
            commit_tenants(store, spooled, dimension, model_id, day, Path(directory))
        indexed[day.isoformat()] = spooled.vectors
    return indexed


def shadow_day(
    iceberg: IcebergCatalog,
    store: ObjectStore,
    vectors: ImageVectors,
    shadow,
    serving: dict[str, Manifest],
    day: date,
) -> dict:
    """The day embedded by the shadow model too (on demand, as the daily run is), put in its own
    index, and the two indexes compared on the day's sales (`similarity/compare.py`, the day held
    out): the comparison's figures and what was embedded."""
    if not vectors.table_name:
        raise ValueError("a shadow model keeps its vectors in IMAGE_VECTORS_TABLE: set it")
    start = datetime.combine(day, datetime.min.time(), UTC)
    images = range_images(iceberg, start, start + timedelta(days=1))
    done = reembed(images, store, shadow, vectors, None, 0, "", lambda _: None)
    shadow_index(iceberg, store, vectors, shadow.model_id, shadow.dimension, [day])
    space = index_space(shadow.model_id, shadow.dimension)
    comparison = Comparison()
    readers = IndexReader(store), IndexReader(store, space=space)
    try:
        for tenant, manifest in serving.items():
            theirs = readers[1].manifest(tenant)
            if theirs is not None and manifest.count and theirs.count:
                both = readers[0].open(manifest), readers[1].open(theirs)
                comparison.add(compare_tenant(*both, {day.isoformat()}))
    finally:
        for reader in readers:
            reader.close()
    return comparison.figures() | {
        "shadow_model": shadow.model_id,
        "shadow_index_space": space,
        "shadow_embedding_calls": done.on_demand,
    }


def shadow_metadata(figures: dict) -> dict:
    """The shadow's figures as the index step's metadata: each named `shadow_…`."""
    return {
        name if name.startswith("shadow_") else f"shadow_{name}": value
        for name, value in figures.items()
        if value is not None
    }


def legacy_layout(store: ObjectStore, space: str, metadata: dict) -> list[str]:
    """A warning for indexes in the layout before one index a model (nothing reads them), counted
    in `metadata`; none when there are none."""
    legacy = legacy_index_tenants(store)
    if not legacy:
        return []
    metadata["legacy_index_tenants"] = len(legacy)
    return [
        f"{len(legacy)} tenant(s) have an index in the layout before one index a model "
        f"(similarity_index/<tenant>/: {', '.join(legacy[:5])}): it is no longer read. "
        "Materialise similarity_index alone over the history to build it again under "
        f"{space}/ (from the table's vectors, no Bedrock call), then delete it"
    ]


def other_embedder(embedder, model: str, dimension: int):
    """The configured embedder's settings with another model and length (checked)."""
    field = "model" if hasattr(embedder, "model") else "stands_for"  # Bedrock's, or the local one's
    other: str = model or getattr(embedder, field)
    length = dimension or embedder.dimension
    model_named(other).check_dimension(length)
    kind, fields = settings_of(embedder, **{field: other, "dimension": length})
    return kind(**fields)


# The shadow model is "no worse" when its price error is at most this much above the serving one's.
SHADOW_PRICE_ERROR_TOLERANCE = 1.05


class IndexConfig(Config):
    shadow_model: str = Field(
        default_factory=lambda: settings().shadow_embedding_model,
        description="a model run in shadow (SHADOW_EMBEDDING_MODEL): the day embedded by it too, "
        "into its own index, and compared with the serving model's ('' for none)",
    )
    shadow_dimension: int = Field(
        default_factory=lambda: settings().shadow_embedding_dimension,
        description="its vectors' length",
    )
