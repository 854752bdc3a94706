"""Arrow data between assets, as Parquet files in the object store (never pickle).

An asset may return a `pyarrow.Table`, or the `Path` of a Parquet file it has already written batch
by batch (so a day never has to fit in memory at once); the file is uploaded and then removed. A downstream asset gets a `pa.Table`,
or a `ParquetFile` to read in batches when its parameter is annotated so.
"""

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableIOManager, InputContext, OutputContext, ResourceDependency

from smartgo_analytics.layout import asset_output_key
from smartgo_analytics.resources.object_store import ObjectStore


class ParquetIOManager(ConfigurableIOManager):
    object_store: ResourceDependency[ObjectStore]

    def _key(self, context: InputContext | OutputContext) -> str:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return asset_output_key(list(context.asset_key.path), partition)

    def handle_output(self, context: OutputContext, obj: pa.Table | Path) -> None:
        key = self._key(context)
        if isinstance(obj, Path):
            size, rows = obj.stat().st_size, pq.ParquetFile(obj).metadata.num_rows
            uri = self.object_store.put_file(key, obj)
            obj.unlink()
        elif isinstance(obj, pa.Table):
            buffer = io.BytesIO()
            pq.write_table(obj, buffer, compression="zstd")
            uri = self.object_store.put_bytes(key, buffer.getvalue())
            size, rows = buffer.tell(), obj.num_rows
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a pyarrow Table or a Parquet file Path, got {type(obj)}"
            )
        partitioned = context.has_asset_partitions
        context.add_output_metadata(
            {
                "parquet_bytes": size,
                "parquet_rows": rows,
                "dagster/uri": uri,
                # Dagster's standard row count: of the day, for a day's hand-off.
                "dagster/partition_row_count" if partitioned else "dagster/row_count": rows,
            }
        )

    def load_input(self, context: InputContext) -> pa.Table | pq.ParquetFile:
        if context.dagster_type.typing_type is pq.ParquetFile:
            # Read by the step; a downloaded copy goes with its process.
            return pq.ParquetFile(self.object_store.local_path(self._key(context)))
        with self.object_store.local_copy(self._key(context)) as path:
            return pq.read_table(path)
