"""Arrow tables between assets, as Parquet files in the object store (never pickle)."""

import io

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

    def handle_output(self, context: OutputContext, obj: pa.Table) -> None:
        if not isinstance(obj, pa.Table):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a pyarrow.Table, got {type(obj)}"
            )
        buffer = io.BytesIO()
        pq.write_table(obj, buffer, compression="zstd")
        uri = self.object_store.put_bytes(self._key(context), buffer.getvalue())
        context.add_output_metadata({"parquet_uri": uri, "parquet_bytes": buffer.tell()})

    def load_input(self, context: InputContext) -> pa.Table:
        return pq.read_table(io.BytesIO(self.object_store.get_bytes(self._key(context))))
