"""Imported once by the server process that embedding workers are forked from: the workers' code,
and the models of the AWS services they call, parsed here once rather than in every worker."""

from smartgo_analytics.assets import embedding_work  # noqa: F401 - what the workers run
from smartgo_analytics.resources.aws import load_service_models

load_service_models("s3", "bedrock-runtime")
