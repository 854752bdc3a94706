"""What an alert says, and keeping secrets out of it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"
# Set by the instance on a failed run when run retries will launch it again.
WILL_RETRY_TAG = "dagster/will_retry"

# user:password@ in a URL; the password may itself hold '@', ':' or '/': up to the last '@' of the word.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*@", re.IGNORECASE)
_SLACK_HOOK = re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+")
# A Slack webhook's token path on its own: T…/B…/secret.
_SLACK_TOKEN = re.compile(r"\bT[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,}\b")
# An AWS secret access key: 40 characters of base64 with both cases (a hex digest has one).
_AWS_SECRET = re.compile(
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)
_PASSWORD_FIELD = re.compile(
    r"([A-Za-z_]*(?:password|passwd|pwd|secret|token)[A-Za-z_]*[\"']?\s*[:=]\s*)(?:'[^']*'|\"[^\"]*\"|[^\s,;}]+)",
    re.IGNORECASE,
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """The text without passwords in URLs or fields, webhook URLs or tokens, AWS secret keys, or any
    given secret."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}***@", text)
    text = _SLACK_HOOK.sub("https://hooks.slack.com/services/***", text)
    text = _SLACK_TOKEN.sub("***", text)
    text = _AWS_SECRET.sub("***", text)
    return _PASSWORD_FIELD.sub(lambda m: f"{m.group(1)}***", text)


def partition_of(tags: Mapping[str, str]) -> str | None:
    """The partition key of a run, or `start...end` for a ranged (single-run backfill) run."""
    if tags.get(PARTITION_TAG):
        return tags[PARTITION_TAG]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if start and end:
        return start if start == end else f"{start}...{end}"
    return None


@dataclass(frozen=True)
class Alert:
    title: str
    error: str
    job: str | None = None
    asset_keys: tuple[str, ...] = ()
    partition: str | None = None
    run_url: str | None = None
    backfill: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"*{self.title}*"]
        if self.job:
            lines.append(f"job: {self.job}")
        if self.asset_keys:
            lines.append(f"assets: {', '.join(self.asset_keys)}")
        lines.append(f"partition: {self.partition or '(none)'}")
        if self.backfill:
            lines.append(f"backfill: {self.backfill}")
        lines.append(f"error: {self.error}")
        lines.extend(f"{k}: {v}" for k, v in self.details.items())
        if self.run_url:
            lines.append(f"run: {self.run_url}")
        return "\n".join(lines)


def root_cause(error) -> str:
    """The message of what went wrong in the asset's own code, from a Dagster error (its
    SerializableErrorInfo), not Dagster's wrapper around it ("Error occurred while executing op")."""
    while error.cause is not None:
        error = error.cause
    return error.message


def short_error(message: str, limit: int = 300) -> str:
    first = next((line.strip() for line in message.splitlines() if line.strip()), "unknown error")
    return first if len(first) <= limit else first[: limit - 1] + "…"


def due_day(now: datetime, deadline_hour: int) -> date | None:
    """The day that must be materialised by now: yesterday once the deadline hour has passed."""
    if now.hour < deadline_hour:
        return None
    return now.date() - timedelta(days=1)
