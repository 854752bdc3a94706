"""How the assets are run: their retries, their groups, which errors are not retried, and when a
materialised day is refreshed because a day it reads changed."""

import errno
import shutil
import tempfile
from contextlib import contextmanager

from dagster import AutomationCondition, Backoff, Failure, Jitter, MetadataValue, RetryPolicy

from smartgo_analytics.core.outage import OutageTooLong

PRICING = "pricing_intelligence"
QUICKSIGHT = "quicksight"

IO_RETRY = RetryPolicy(
    max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


@contextmanager
def permanent_errors(*kinds: type[Exception]):
    """Configuration problems fail the step at once: retrying a missing table only delays the alert."""
    try:
        yield
    except kinds as error:
        raise Failure(description=str(error), allow_retries=False) from None


@contextmanager
def outage_fails_the_step():
    """A dependency down for longer than its allowance fails the step, naming it and for how long;
    the step's retries (IO_RETRY) and the run's then try the day again."""
    try:
        yield
    except OutageTooLong as error:
        raise Failure(
            description=str(error),
            metadata={
                "dependency": error.dependency,
                "down_s": round(error.down_s, 1),
                "allowance_s": error.allowance_s,
                "last_error": MetadataValue.text(error.reason),
            },
        ) from None


@contextmanager
def disk_full_is_named():
    """A full disk fails the step at once (retrying it fills the same disk), naming where the step
    writes its files, what is free there, and the setting that moves them."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        directory = tempfile.gettempdir()
        free = shutil.disk_usage(directory).free
        raise Failure(
            description=f"no space left on the device of {directory} ({free:,} bytes free"
            f"{', writing ' + error.filename if error.filename else ''}): set TMPDIR to a "
            "directory on a larger disk (a day of 100,000 sales needs about 650 MB)",
            metadata={"directory": directory, "free_bytes": free},
            allow_retries=False,
        ) from None


# A day already materialised is made again when the data of a day it reads changed since it was
# made (a backfill of an earlier day, a day re-run with other sales), once no day it reads is being
# made. A day never materialised is left to the schedule and to backfills.
REFRESHED_WHEN_ITS_INPUTS_CHANGE = (
    ~AutomationCondition.missing()
    & AutomationCondition.any_deps_match(
        AutomationCondition.data_version_changed()
    ).since_last_handled()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("a day it reads changed")
