"""Where the day's SOLD sales come from: a resource with one interface, picked per deployment by
SMARTGO_SALES_SOURCE (`deployment_resources.py`, SALES_SOURCES). Two today: the SmartGo database
(`postgres.SmartGoDatabase`) and the SmartGo API (`sales_api.SmartGoApi`); a third is one module
with a subclass and one line in SALES_SOURCES."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from pydantic import Field

from smartgo_analytics.core.outage import Outage, OutageReport
from smartgo_analytics.resources.aws import AwsResource

T = TypeVar("T")


class SalesSource(AwsResource):
    """The day's SOLD products with start <= sold date < end, as rows of `core.sales.SOURCE_COLUMNS`
    in batches (a batch at a time in memory), validated and quarantined downstream alike: each
    row checked against the window and `tenant` it was asked for (`core.sales.validated_day`)."""

    tenant: str | None = Field(
        default=None, description="TENANT: only this tenant's sales; all when unset"
    )

    kind: ClassVar[str] = "source"  # in the run's metadata: `<kind>_reads_retried`, ...
    dependency: ClassVar[str] = "the source"  # how its outages are named
    errors: ClassVar[tuple[type[Exception], ...]] = ()  # what fails at once, naming a setting

    def check(self) -> None:
        """An error of `errors`, naming the setting, for a configuration that cannot work."""

    def read_sold_products(
        self,
        start: datetime,
        end: datetime,
        consume: Callable[[Iterator[list[dict[str, Any]]]], T],
        allowance_s: float,
    ) -> tuple[T, OutageReport]:
        """consume(the day's rows, batch by batch), and the outages waited out meanwhile (an
        outage longer than `allowance_s` raises OutageTooLong)."""
        outage = Outage(self.dependency, allowance_s, backoff_s=1.0)
        return self.consumed(start, end, consume, outage), outage.report()

    def consumed(self, start: datetime, end: datetime, consume: Callable, outage: Outage) -> Any:
        """consume(the rows), their reads waited out through `outage` as the source allows."""
        raise NotImplementedError
