"""Imported once by the server process that embedding workers are forked from: the workers' code,
and the models of the AWS services they call, parsed here once rather than in every worker."""

import gc

from smartgo_analytics.assets import embedding_work  # noqa: F401 - what the workers run
from smartgo_analytics.resources.aws import load_service_models

load_service_models("s3", "bedrock-runtime")

# Workers share this process's memory until they write to it, and the garbage collector writes to
# every object it visits: objects that exist now are left out of its rounds, so they stay shared.
gc.freeze()
