"""The SmartGo API as a source of sales: the day's SOLD products read page by page over HTTP, as
the database source reads them (rows of `core.sales.SOURCE_COLUMNS`, validated and quarantined
downstream exactly alike).

Configured, not guessed: the listing's URL; the parameters that carry the window (ISO 8601 UTC),
the status and the tenant; the pagination (a cursor field, a page number, an offset, or the `Link`
header); where the items sit in an answer; and the API's field names for the table's columns.
Pages are fetched one at a time (memory is a page, whatever the day's size), each through the
outage helper: a 5xx, 429 (its `Retry-After` honoured), a reset or a timeout is waited out within
the allowance; 401/403 and a missing route fail at once, naming the setting. A page that repeats,
a cursor or link that loops, a next link to another origin and a total that disagrees with the
items read are named, never followed. The token is sent in a header and never written anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import Field, PrivateAttr

from smartgo_analytics.core.outage import Outage, Transient
from smartgo_analytics.resources.sales_source import SalesSource

T = TypeVar("T")
PAGINATIONS = ("cursor", "page", "offset", "link")
# The seed's SmartGo client: the API's names for the table's source columns.
SEED_FIELDS = {
    "productId": "id",
    "tenantId": "tenant_id",
    "category": "category",
    "brand": "brand",
    "condition": "condition",
    "soldPrice": "sold_price",
    "soldDate": "sold_date",
    "imageUrl": "image_url",
    "description": "description",
}
MAX_PAGE_BYTES = 64 * 2**20  # an answer read at most: a page, not a day
MAX_PAGES = 1_000_000  # a pagination that never ends is named, not followed forever


class SalesApiError(Exception):
    """The API cannot be used as configured, or answered what cannot be a day's sales; the
    message names the setting or the page, never the token."""


class SalesApiUnavailable(SalesApiError, Transient):
    """A 5xx, 429, reset or timeout: worth trying again (after `retry_after_s`, if it said)."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after(value: str | None) -> float | None:
    """Retry-After's seconds (a number, or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(
            0.0, (parsedate_to_datetime(value) - datetime.now().astimezone()).total_seconds()
        )
    except (TypeError, ValueError):
        return None


def at_path(answer: Any, path: str) -> Any:
    """The value at a dotted path of a JSON answer ("" is the answer itself); None if absent."""
    for part in [p for p in path.split(".") if p]:
        if not isinstance(answer, dict):
            return None
        answer = answer.get(part)
    return answer


def source_row(item: Any, fields: dict[str, str]) -> dict[str, Any]:
    """An API item as a source row: its fields renamed to the table's, `sold_date` parsed from ISO
    8601 (kept as text when it is not, which the validation rejects with its reason)."""
    if not isinstance(item, dict):
        return {}
    row = {column: item.get(name) for name, column in fields.items()}
    sold = row.get("sold_date")
    if isinstance(sold, str):
        with contextlib.suppress(ValueError):
            row["sold_date"] = datetime.fromisoformat(sold.strip())
    return row


class SmartGoApi(SalesSource):
    """Where the day's SOLD products come from when SMARTGO_SALES_SOURCE=api.

    The token: `token` (SMARTGO_API_TOKEN, a secret) or `token_ssm_parameter` (an SSM SecureString
    holding it), sent as `Authorization: Bearer <token>`, or as the raw value of `auth_header`
    when that is another header (an API key)."""

    url: str = Field(description="SMARTGO_API_URL: the listing of products (https://...)")
    pagination: str = Field(default="cursor", description="cursor, page, offset or link")
    from_param: str = "soldFrom"  # the window's start, ISO 8601 UTC, inclusive
    to_param: str = "soldTo"  # its end, exclusive
    status_param: str = "status"
    status: str = "SOLD"
    tenant_param: str = "tenantId"
    tenant: str | None = Field(default=None, description="TENANT: only this tenant's sales")
    items_path: str = Field(default="items", description="where an answer's items are ('': it)")
    total_path: str | None = Field(default="total", description="an answer's total, if it says")
    cursor_path: str = "nextCursor"
    cursor_param: str = "cursor"
    page_param: str = "page"
    first_page: int = 1
    size_param: str = "pageSize"
    offset_param: str = "offset"
    limit_param: str = "limit"
    page_size: int = Field(default=1000, ge=1)
    fields: dict[str, str] = Field(default_factory=lambda: dict(SEED_FIELDS))
    token: str | None = Field(default=None, description="SMARTGO_API_TOKEN (a secret)")
    token_ssm_parameter: str | None = Field(default=None, description="SMARTGO_API_TOKEN_SSM")
    auth_header: str = "Authorization"
    timeout_s: float = 30.0

    kind: ClassVar[str] = "api"
    dependency: ClassVar[str] = "SmartGo API"
    errors: ClassVar[tuple[type[Exception], ...]] = (SalesApiError,)

    _token: str | None = PrivateAttr(default=None)

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            self._token = self._read_token()
        if not self._token:
            return {"Accept": "application/json"}
        value = f"Bearer {self._token}" if self.auth_header == "Authorization" else self._token
        return {"Accept": "application/json", self.auth_header: value}

    def _read_token(self) -> str:
        if self.token and self.token_ssm_parameter:
            raise SalesApiError("set one of SMARTGO_API_TOKEN or SMARTGO_API_TOKEN_SSM, not both")
        if not self.token_ssm_parameter:
            return self.token or ""
        ssm = self.boto3_client("ssm")
        try:
            answer = ssm.get_parameter(Name=self.token_ssm_parameter, WithDecryption=True)
        except ssm.exceptions.ParameterNotFound:
            raise SalesApiError(
                f"SSM parameter {self.token_ssm_parameter} does not exist (SMARTGO_API_TOKEN_SSM)"
            ) from None
        return answer["Parameter"]["Value"].strip()

    def check(self) -> None:
        """SalesApiError, naming the setting, for a configuration that cannot work."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SalesApiError(f"SMARTGO_API_URL={self.url!r} is not an http(s) URL")
        if self.pagination not in PAGINATIONS:
            raise SalesApiError(
                f"SMARTGO_API_PAGINATION={self.pagination!r} is not one of {', '.join(PAGINATIONS)}"
            )
        missing = {"id", "tenant_id", "sold_price", "sold_date", "image_url"} - set(
            self.fields.values()
        )
        if missing:
            raise SalesApiError(f"SMARTGO_API_OPTIONS' fields map nothing to {sorted(missing)}")

    def consumed(self, start: datetime, end: datetime, consume: Callable, outage: Outage) -> Any:
        """consume(the day's SOLD products, a page at a time); each page's transient failures are
        waited out through `outage` (OutageTooLong past its allowance)."""
        self.check()
        with httpx.Client(timeout=self.timeout_s, headers=self._headers()) as client:
            pages = self._pages(
                lambda url, params: outage.call(lambda: self._get(client, url, params)), start, end
            )
            return consume(pages)

    def _pages(self, get, start: datetime, end: datetime) -> Iterator[list[dict[str, Any]]]:
        window = {
            self.from_param: start.isoformat().replace("+00:00", "Z"),
            self.to_param: end.isoformat().replace("+00:00", "Z"),
            self.status_param: self.status,
        }
        if self.tenant:
            window[self.tenant_param] = self.tenant
        seen_pages: set[str] = set()
        seen_steps: set[str] = set()
        url, step = self.url, self._first_step()
        read, total = 0, None
        for number in range(1, MAX_PAGES + 1):
            # A next link carries its own query; the configured URL is given the window and step.
            answer, next_link = get(url, {**window, **step} if url == self.url else None)
            items = at_path(answer, self.items_path)
            if not isinstance(items, list):
                raise SalesApiError(
                    f"page {number} of the SmartGo API has no list at {self.items_path!r} "
                    "(SMARTGO_API_OPTIONS items_path)"
                )
            rows = [source_row(item, self.fields) for item in items]
            # A page is known by its products' ids, in order: the same ids again is the same page.
            ids = "\x1f".join(str(row.get("id")) for row in rows)
            fingerprint = hashlib.sha256(ids.encode()).hexdigest()
            if rows and fingerprint in seen_pages:
                raise SalesApiError(f"page {number} of the SmartGo API repeats an earlier page")
            seen_pages.add(fingerprint)
            if self.total_path and isinstance(at_path(answer, self.total_path), int):
                total = at_path(answer, self.total_path)
            read += len(rows)
            if rows:
                yield rows
            following = self._next(answer, items, step, next_link)
            if following is None:
                break
            url, step = following
            key = url + json.dumps(step, sort_keys=True)
            if key in seen_steps:
                raise SalesApiError(
                    f"the SmartGo API's pagination loops: page {number} points back to an earlier page"
                )
            seen_steps.add(key)
        else:
            raise SalesApiError(f"the SmartGo API gave more than {MAX_PAGES} pages")
        if total is not None and total != read:
            raise SalesApiError(f"the SmartGo API said {total} sales but gave {read}")

    def _first_step(self) -> dict[str, Any]:
        if self.pagination == "page":
            return {self.page_param: self.first_page, self.size_param: self.page_size}
        if self.pagination == "offset":
            return {self.offset_param: 0, self.limit_param: self.page_size}
        if self.pagination == "cursor":
            return {self.size_param: self.page_size}
        return {self.size_param: self.page_size}

    def _next(self, answer, items: list, step: dict, next_link: str | None):
        """(url, parameters) of the next page, or None after the last."""
        if self.pagination == "cursor":
            cursor = at_path(answer, self.cursor_path)
            if cursor in (None, ""):
                return None
            return self.url, {**step, self.cursor_param: cursor}
        if self.pagination == "link":
            if not next_link:
                return None
            following = urljoin(self.url, next_link)
            if urlsplit(following)[:2] != urlsplit(self.url)[:2]:
                raise SalesApiError(
                    "the SmartGo API's next link leaves SMARTGO_API_URL's origin: not followed"
                )
            return following, {}
        if len(items) < self.page_size:
            return None
        if self.pagination == "page":
            return self.url, {**step, self.page_param: step[self.page_param] + 1}
        return self.url, {**step, self.offset_param: step[self.offset_param] + len(items)}

    def _get(self, client: httpx.Client, url: str, params: dict | None) -> tuple[Any, str | None]:
        """One page: its JSON answer and its `Link: rel="next"` target."""
        where = urlsplit(url)._replace(query="").geturl()
        try:
            with client.stream("GET", url, params=params) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    raise SalesApiUnavailable(
                        f"the SmartGo API answered {status} at {where}",
                        retry_after(response.headers.get("Retry-After")),
                    )
                if status in (401, 403):
                    raise SalesApiError(
                        f"the SmartGo API refused the token ({status}) at {where}: check "
                        "SMARTGO_API_TOKEN or SMARTGO_API_TOKEN_SSM"
                    )
                if status != 200:
                    raise SalesApiError(
                        f"the SmartGo API answered {status} at {where} (SMARTGO_API_URL)"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_PAGE_BYTES:
                        raise SalesApiError(
                            f"a page of the SmartGo API is over {MAX_PAGE_BYTES} bytes"
                        )
                link = response.links.get("next", {}).get("url")
        except httpx.TransportError as error:  # refused, reset, timed out, cut short
            raise SalesApiUnavailable(
                f"the SmartGo API did not answer at {where}: {type(error).__name__}"
            ) from None
        try:
            return json.loads(body), link
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SalesApiError(f"a page of the SmartGo API at {where} is not JSON") from None
