"""The SmartGo API as a source of sales: the day's SOLD products read page by page over HTTP, as
the database source reads them (rows of `core.sales.SOURCE_COLUMNS`, validated and quarantined
downstream exactly alike).

Configured, not guessed: the listing's URL; the parameters that carry the window (ISO 8601 UTC),
the status and the tenant; the pagination (a cursor field, a page number, an offset, or the `Link`
header); where the items sit in an answer; and the API's field names for the table's columns.
Pages are fetched one at a time (memory is a page, whatever the day's size), each through the
outage helper: a 408, 429, 5xx, reset or timeout is waited out within the allowance (a
`Retry-After` past it fails at once, named); 401/403 and a missing route fail at once, naming the
setting. Nothing the server says is trusted: a page is read within one deadline (`page_deadline_s`:
connection, headers and body), to at most `max_page_bytes` decoded (gzip and deflate offered and
inflated a bounded piece at a time) and `max_page_items` items; a day within `max_pages` pages; a
short page is not the end unless the server says so (an empty page, no cursor or link, the total
reached). A page that repeats, a cursor or link that loops or is malformed, a next link to another
origin and a total that disagrees with the items read are named, never followed. Every row is then
checked against the window and tenant asked for (`core.sales.validated_day`). The token is sent in
a header and never written anywhere: a server that echoes it finds it masked in every message and
value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import Field, PrivateAttr

from smartgo_analytics.core.http import (
    ACCEPT_ENCODING,
    Deadline,
    DeadlinePassed,
    UnreadableAnswer,
    read_bounded,
    retry_after_s,
    transient_status,
)
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
# A JSON value in a page costs Python far more than its bytes (`[{},{},...]`: 3 bytes, ~60 in
# memory): a page is refused before parsing when it holds more values than its items could need.
VALUES_PER_ITEM = 64
BIG_INTEGER_DIGITS = 300  # a longer integer is read as a Decimal (no ValueError), a row's reason


class SalesApiError(Exception):
    """The API cannot be used as configured, or answered what cannot be a day's sales; the
    message names the setting or the page, never the token."""


class SalesApiUnavailable(SalesApiError, Transient):
    """A 5xx, 429, reset or timeout: worth trying again (after `retry_after_s`, if it said)."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def at_path(answer: Any, path: str) -> Any:
    """The value at a dotted path of a JSON answer ("" is the answer itself); None if absent."""
    for part in [p for p in path.split(".") if p]:
        if not isinstance(answer, dict):
            return None
        answer = answer.get(part)
    return answer


def source_row(item: Any, fields: dict[str, str], mask: Callable[[str], str]) -> dict[str, Any]:
    """An API item as a source row: its fields renamed to the table's, text passed through `mask`
    (the token, were the server to echo it, is never kept), `sold_date` parsed from ISO 8601 (kept
    as text when it is not, which the validation rejects with its reason)."""
    if not isinstance(item, dict):
        return {}
    row = {
        column: mask(value) if isinstance(value, str) else value
        for column, value in ((column, item.get(name)) for name, column in fields.items())
    }
    sold = row.get("sold_date")
    if isinstance(sold, str) and len(sold) <= 64:
        with contextlib.suppress(ValueError):
            row["sold_date"] = datetime.fromisoformat(sold.strip())
    return row


def parse_page(body: bytes, max_values: int) -> Any:
    """A page's JSON, refused before parsing when it holds more than `max_values` values (each
    value but a container's first follows a comma: the count is an upper bound); ValueError, its
    message a reason, for what is not JSON or nests too deeply."""
    values = body.count(b",") + body.count(b"{") + body.count(b"[")
    if values > max_values:
        raise ValueError(f"it holds over {max_values} JSON values")
    try:
        return json.loads(body, parse_int=_integer)
    except RecursionError:
        raise ValueError("it nests too deeply") from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise ValueError("it is not JSON") from None


def _integer(text: str) -> int | Decimal:
    return int(text) if len(text) <= BIG_INTEGER_DIGITS else Decimal(text)


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
    timeout_s: float = Field(default=30.0, gt=0, description="a connection or a read, at most")
    page_deadline_s: float = Field(
        default=120.0, gt=0, description="one page, connection, headers and body, at most"
    )
    max_page_bytes: int = Field(default=64 * 2**20, ge=1024, description="a page, decoded")
    max_page_items: int = Field(default=10_000, ge=1, description="items in one page")
    max_pages: int = Field(default=10_000, ge=1, description="pages in one day")

    kind: ClassVar[str] = "api"
    dependency: ClassVar[str] = "SmartGo API"
    errors: ClassVar[tuple[type[Exception], ...]] = (SalesApiError,)

    _token: str | None = PrivateAttr(default=None)

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            self._token = self._read_token()
        plain = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING}
        if not self._token:
            return plain
        value = f"Bearer {self._token}" if self.auth_header == "Authorization" else self._token
        return {**plain, self.auth_header: value}

    def _mask(self, text: str) -> str:
        """Text the server sent, with the token (were it echoed) masked."""
        return text.replace(self._token, "[token]") if self._token else text

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
        # No connection is kept alive: each page's deadline cuts the connection that page made.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=self.timeout_s, headers=self._headers(), limits=limits) as client:
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
        for number in range(1, self.max_pages + 1):
            # A next link carries its own query; the configured URL is given the window and step.
            answer, next_link = get(url, {**window, **step} if url == self.url else None)
            items = at_path(answer, self.items_path)
            if not isinstance(items, list):
                raise SalesApiError(
                    f"page {number} of the SmartGo API has no list at {self.items_path!r} "
                    "(SMARTGO_API_OPTIONS items_path)"
                )
            if len(items) > self.max_page_items:
                raise SalesApiError(
                    f"page {number} of the SmartGo API has {len(items)} items, over "
                    f"{self.max_page_items} (SMARTGO_API_OPTIONS max_page_items)"
                )
            rows = [source_row(item, self.fields, self._mask) for item in items]
            # A page is known by its products' ids, in order: the same ids again is the same page.
            ids = "\x1f".join(repr(row.get("id")) for row in rows)
            fingerprint = hashlib.sha256(ids.encode("utf-8", "backslashreplace")).hexdigest()
            if rows and fingerprint in seen_pages:
                raise SalesApiError(f"page {number} of the SmartGo API repeats an earlier page")
            seen_pages.add(fingerprint)
            said = at_path(answer, self.total_path) if self.total_path else None
            if isinstance(said, int) and not isinstance(said, bool):
                total = said
            read += len(rows)
            if rows:
                yield rows
            following = self._next(answer, items, step, next_link, read, total)
            if following is None:
                break
            url, step = following
            key = url + json.dumps(step, sort_keys=True, default=str)
            if key in seen_steps:
                raise SalesApiError(
                    f"the SmartGo API's pagination loops: page {number} points back to an earlier page"
                )
            seen_steps.add(key)
        else:
            raise SalesApiError(
                f"the SmartGo API gave more than {self.max_pages} pages for one day without "
                "ending (SMARTGO_API_OPTIONS max_pages)"
            )
        if total is not None and total != read:
            raise SalesApiError(f"the SmartGo API said {total} sales but gave {read}")

    def _first_step(self) -> dict[str, Any]:
        if self.pagination == "page":
            return {self.page_param: self.first_page, self.size_param: self.page_size}
        if self.pagination == "offset":
            return {self.offset_param: 0, self.limit_param: self.page_size}
        return {self.size_param: self.page_size}

    def _next(self, answer, items: list, step: dict, next_link, read: int, total: int | None):
        """(url, parameters) of the next page, or None after the last. Pages and offsets end with
        an empty page or the total reached, never with a short page: a server may give fewer
        items than asked (its own cap) and still have more."""
        if self.pagination == "cursor":
            cursor = at_path(answer, self.cursor_path)
            if cursor in (None, ""):
                return None
            if (
                not isinstance(cursor, (str, int))
                or isinstance(cursor, bool)
                or len(str(cursor)) > 4096
            ):
                raise SalesApiError(
                    f"the SmartGo API's next cursor at {self.cursor_path!r} is not a short text "
                    "or number: not followed"
                )
            return self.url, {**step, self.cursor_param: cursor}
        if self.pagination == "link":
            return (self._followed(next_link), {}) if next_link else None
        if not items or (total is not None and read >= total):
            return None
        if self.pagination == "page":
            return self.url, {**step, self.page_param: step[self.page_param] + 1}
        return self.url, {**step, self.offset_param: step[self.offset_param] + len(items)}

    def _followed(self, next_link: str) -> str:
        """A next link, made absolute, if it stays on SMARTGO_API_URL's origin."""
        try:
            following = urljoin(self.url, next_link)
            parts = urlsplit(following)
            parts.port  # noqa: B018  (a port out of range raises ValueError here)
            same_origin = parts[:2] == urlsplit(self.url)[:2]
            httpx.URL(following)
        except (ValueError, httpx.InvalidURL):
            raise SalesApiError("the SmartGo API's next link is malformed: not followed") from None
        if not same_origin:
            raise SalesApiError(
                "the SmartGo API's next link leaves SMARTGO_API_URL's origin: not followed"
            )
        return following

    def _get(self, client: httpx.Client, url: str, params: dict | None) -> tuple[Any, str | None]:
        """One page within one deadline: its JSON answer and its `Link: rel="next"` target."""
        where = self._mask(urlsplit(url)._replace(query="").geturl())
        try:
            with Deadline(self.page_deadline_s) as deadline:
                request = client.build_request("GET", url, params=params)
                request.extensions.update(deadline.extensions())
                response = client.send(request, stream=True)
                try:
                    self._check_status(response, where)
                    body = read_bounded(
                        response.headers, response.iter_raw(), self.max_page_bytes, deadline
                    )
                    link = response.links.get("next", {}).get("url")
                finally:
                    response.close()
        except UnreadableAnswer as error:
            raise SalesApiError(
                f"a page of the SmartGo API at {where} cannot be read: {error} "
                "(SMARTGO_API_OPTIONS max_page_bytes)"
            ) from None
        except (DeadlinePassed, httpx.TransportError) as error:  # refused, reset, timed out, cut
            why = (
                f"no whole page within {self.page_deadline_s:g} s (SMARTGO_API_OPTIONS "
                "page_deadline_s)"
                if deadline.passed
                else type(error).__name__
            )
            raise SalesApiUnavailable(f"the SmartGo API did not answer at {where}: {why}") from None
        try:
            return parse_page(body, self.max_page_items * VALUES_PER_ITEM), link
        except ValueError as error:
            raise SalesApiError(
                f"a page of the SmartGo API at {where} cannot be used: {error}"
            ) from None

    def _check_status(self, response: httpx.Response, where: str) -> None:
        status = response.status_code
        if transient_status(status):
            raise SalesApiUnavailable(
                f"the SmartGo API answered {status} at {where}",
                retry_after_s(response.headers.get("Retry-After")),
            )
        if status in (401, 403):
            raise SalesApiError(
                f"the SmartGo API refused the token ({status}) at {where}: check "
                "SMARTGO_API_TOKEN or SMARTGO_API_TOKEN_SSM"
            )
        if status != 200:
            raise SalesApiError(f"the SmartGo API answered {status} at {where} (SMARTGO_API_URL)")
