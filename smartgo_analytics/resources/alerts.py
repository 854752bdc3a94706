"""Where alerts go: a Slack incoming webhook, an SNS topic, or the log."""

from __future__ import annotations

import logging

import httpx
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from smartgo_analytics.core.alerts import Alert, redact
from smartgo_analytics.resources.aws import AwsResource

DESTINATIONS = ("log", "slack", "sns")
logger = logging.getLogger("smartgo_analytics.alerts")


class AlertDeliveryError(Exception):
    pass


class Alerter(AwsResource):
    destinations: list[str] = Field(
        default_factory=lambda: ["log"], description="any of log, slack, sns"
    )
    slack_webhook_url: str | None = Field(
        default=None, description="ALERT_SLACK_WEBHOOK_URL (a secret)"
    )
    sns_topic_arn: str | None = Field(default=None, description="ALERT_SNS_TOPIC_ARN")
    webserver_url: str = Field(
        default="http://127.0.0.1:3000", description="DAGSTER_WEBSERVER_URL, for run links"
    )

    def run_url(self, run_id: str) -> str:
        return f"{self.webserver_url.rstrip('/')}/runs/{run_id}"

    def send(self, alert: Alert) -> list[str]:
        """Deliver the alert to every destination; what failed, a line each (the others still get it)."""
        unknown = [d for d in self.destinations if d not in DESTINATIONS]
        if unknown:
            raise ValueError(
                f"ALERT_DESTINATIONS has unknown {unknown}; use {', '.join(DESTINATIONS)}"
            )
        text = redact(alert.text(), [self.slack_webhook_url or ""])
        failures = []
        for destination in self.destinations:
            try:
                getattr(self, f"_to_{destination}")(alert, text)
            except (AlertDeliveryError, httpx.HTTPError, BotoCoreError, ClientError) as error:
                failures.append(
                    f"{destination}: {redact(str(error), [self.slack_webhook_url or ''])}"
                )
        return failures

    def _to_log(self, alert: Alert, text: str) -> None:
        logger.error(text)

    def _to_slack(self, alert: Alert, text: str) -> None:
        if not self.slack_webhook_url:
            raise ValueError("ALERT_SLACK_WEBHOOK_URL is not set but alerts go to slack")
        try:
            response = httpx.post(self.slack_webhook_url, json={"text": text}, timeout=10)
        except httpx.HTTPError as error:
            raise AlertDeliveryError(f"Slack webhook unreachable: {type(error).__name__}") from None
        if response.status_code >= 300:
            raise AlertDeliveryError(f"Slack webhook answered HTTP {response.status_code}")

    def _to_sns(self, alert: Alert, text: str) -> None:
        if not self.sns_topic_arn:
            raise ValueError("ALERT_SNS_TOPIC_ARN is not set but alerts go to sns")
        self.boto3_client("sns").publish(
            TopicArn=self.sns_topic_arn, Subject=alert.title[:100], Message=text
        )
