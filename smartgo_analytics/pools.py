"""Dagster concurrency pools: the steps that share something across runs, and their limits.

A pool's limit lives in the instance (Postgres in production), so it holds across run workers on
any machine. The instance's `concurrency.pools.default_limit` (dagster.yaml) is the `bedrock`
pool's; the limits below differ from it and are set on the instance by `smartgo-analytics dev` and
`demo`, and in production once with `dagster instance concurrency set <pool> <limit>`.
"""

BEDROCK = "bedrock"  # embedding steps in flight across runs
# One index step at a time: each rewrites its tenants' manifests and segments. (A run that meets
# another anyway, under a pool left at the default limit, builds its update again: see
# similarity/store.commit_day.)
SIMILARITY_INDEX = "similarity_index"
# One re-embedding at a time: two runs over the same range would pay two batch jobs for the same
# vectors.
REEMBEDDING = "reembedding"
POOL_LIMITS = {SIMILARITY_INDEX: 1, REEMBEDDING: 1}


def set_pool_limits(instance) -> None:
    for pool, limit in POOL_LIMITS.items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)
