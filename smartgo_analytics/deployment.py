"""Which deployment this is, decided once (`this_deployment`), and what each one's readers need:
its Iceberg catalog's properties, its lake's files, and (with Dagster) its resources.

Dagster-free: the commands and the comparables page read the lake through it and answer in well
under two seconds; `resources()` imports the Dagster resources when it is called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smartgo_analytics.core.models import local_stand_in
from smartgo_analytics.lake_directory import LakeDirectory
from smartgo_analytics.layout import index_space
from smartgo_analytics.local.stack import LOCAL_BUCKET, local_catalog_properties, smartgo_home
from smartgo_analytics.settings import Settings, settings


@dataclass(frozen=True)
class Deployment:
    config: Settings

    local = False

    def catalog_properties(self) -> contextlib.AbstractContextManager[dict[str, str]]:
        """pyiceberg's properties of the deployment's catalog, for the block."""
        raise NotImplementedError

    def lake_files(self) -> LakeDirectory | None:
        """The lake read as files, without the Dagster resources (None: read it through them)."""
        return None

    def resources(self) -> dict[str, object]:
        """The Dagster resources of the deployment."""
        raise NotImplementedError

    def embedding_model(self) -> str:
        """The model id of the deployment's embedder's vectors."""
        return self.config.embedding_model

    def index_space(self) -> str:
        """The index the deployment's embedder's vectors are in (`layout.index_space`), known
        without the Dagster resources (a question by product id needs no embedder)."""
        return index_space(self.embedding_model(), self.config.embedding_dimension)


@dataclass(frozen=True)
class Local(Deployment):
    """The embedded stack under SMARTGO_HOME: loopback servers, the lake a directory."""

    local = True

    @property
    def home(self) -> Path:
        return smartgo_home(self.config.smartgo_home)

    @contextlib.contextmanager
    def catalog_properties(self) -> Iterator[dict[str, str]]:
        # The stack's catalog, with its PostgreSQL started for the block when the stack is down.
        with local_catalog_properties(self.home) as properties:
            yield properties

    def lake_files(self) -> LakeDirectory:
        return LakeDirectory(self.home / "lake" / LOCAL_BUCKET)

    def embedding_model(self) -> str:
        # The local visual embedder, standing in for the configured model.
        return local_stand_in(self.config.embedding_model, self.config.embedding_dimension)

    def resources(self) -> dict[str, object]:
        # Imported when called: Dagster comes with the resources (about a second).
        from smartgo_analytics.deployment_resources import local_resources

        return local_resources(self.config)


@dataclass(frozen=True)
class Prod(Deployment):
    """AWS: S3, DynamoDB, Bedrock, the SmartGo Postgres and an Iceberg catalog."""

    @contextlib.contextmanager
    def catalog_properties(self) -> Iterator[dict[str, str]]:
        yield self.config.configured_catalog()

    def resources(self) -> dict[str, object]:
        # Imported when called: Dagster comes with the resources (about a second).
        from smartgo_analytics.deployment_resources import prod_resources

        return prod_resources(self.config)


DEPLOYMENTS: dict[str, type[Deployment]] = {"local": Local, "prod": Prod}


def this_deployment(config: Settings | None = None) -> Deployment:
    """The deployment SMARTGO_DEPLOYMENT names (local by default)."""
    config = config or settings()
    return DEPLOYMENTS[config.deployment](config)
