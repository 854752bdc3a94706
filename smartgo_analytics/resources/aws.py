"""The one way this project makes a boto3 client."""

from __future__ import annotations

import threading

import boto3
from botocore.config import Config
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

# One boto3 session for every client: a client built from a session that has built one before
# reuses its parsed service model (milliseconds instead of a tenth of a second; the
# `embedding_throughput` benchmark). Sessions are not thread-safe, so clients are made one at a time.
_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def _client_from_shared_session(service: str, **options):
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(service, **options)


def load_service_models(*services: str) -> None:
    """Parse these services' models into the shared session now (processes forked afterwards start
    with them parsed)."""
    for service in services:
        # Placeholder keys: parsing a model must not walk the credential chain (on a laptop, that
        # waits for the EC2 metadata service); real clients bring their own credentials.
        _client_from_shared_session(
            service, region_name="us-east-1", aws_access_key_id="-", aws_secret_access_key="-"
        )


class AwsResource(ConfigurableResource):
    """Base of every resource that talks to an AWS service.

    With `endpoint_url` and the keys unset boto3 honours the standard settings
    (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_REGION`, profiles, instance roles), so
    real AWS, moto and LocalStack all work by configuration. The local deployment gives its
    loopback endpoint and placeholder keys here, as data.
    """

    region_name: str | None = Field(
        default=None, description="AWS region; boto3's default when unset"
    )
    endpoint_url: str | None = Field(default=None, description="Override the service endpoint")
    aws_access_key_id: str | None = Field(
        default=None, description="Access key; boto3's credential chain when unset"
    )
    aws_secret_access_key: str | None = Field(
        default=None, description="Secret key; boto3's credential chain when unset (a secret)"
    )

    _clients: dict = PrivateAttr(default_factory=dict)
    _clients_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def boto3_client(self, service: str, **config: object):
        """One client per service and resource instance; clients are thread-safe, making one is
        not: the first calls of a hundred threads would each build their own (tens of ms of CPU each).
        """
        client = self._clients.get(service)
        if client is not None:
            return client
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = self._new_client(service, config)
            return self._clients[service]

    def _new_client(self, service: str, config: dict):
        options: dict = {
            "region_name": self.region_name,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
        }
        retry = config.pop("retries", {"mode": "adaptive", "max_attempts": 8})
        # botocore's parameter validation stays on: it names a malformed parameter before the
        # request leaves, and costs 5 us an InvokeModel and 0.3 ms a BatchWriteItem of 25 (about
        # 11 us an image, 0.006% of a photo sale's 186 ms). Checksums only where the service
        # requires them (CPU per image counts).
        settings = Config(
            retries=retry,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **config,
        )
        return _client_from_shared_session(service, config=settings, **options)
