"""Imported once by the server process that embedding workers are forked from: the workers' code,
the models of the AWS services they call and the CA bundle, loaded here once rather than in every
worker."""

import gc

from smartgo_analytics.embedding import workers  # noqa: F401 - what the workers run
from smartgo_analytics.resources.aws import load_service_models
from smartgo_analytics.resources.images import tls_context

load_service_models("s3", "bedrock-runtime", "dynamodb")
tls_context()

# Workers share this process's memory until they write to it, and the garbage collector writes to
# every object it visits: objects that exist now are left out of its rounds, so they stay shared.
gc.freeze()
