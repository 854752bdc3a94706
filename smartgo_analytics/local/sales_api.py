"""The local stack's SmartGo API: the demo database's products over HTTP on 127.0.0.1, as the seed's
"API-based query alternative" returns them (`productId, tenantId, category, brand, condition,
soldPrice, soldDate, imageUrl, description`), so that SMARTGO_SALES_SOURCE=api runs end to end.

GET /v1/products?soldFrom=...&soldTo=...&status=SOLD[&tenantId=...]&pageSize=N answers
`{"items": [...], "nextCursor": ..., "total": N}` (the total on the first page) in (sold_date, id) order, and a `Link` header to
the next page; the page is chosen by `cursor` (the default), `page` (from 1) or `offset`, so each
pagination the source can be configured with is served. A bearer token is required when given.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import psycopg

PATH = "/v1/products"
MAX_PAGE_SIZE = 5000
_COLUMNS = (
    ("id", "productId"),
    ("tenant_id", "tenantId"),
    ("category", "category"),
    ("brand", "brand"),
    ("condition", "condition"),
    ("sold_price", "soldPrice"),
    ("sold_date", "soldDate"),
    ("image_url", "imageUrl"),
    ("description", "description"),
)
_WHERE = (
    "status = %(status)s AND sold_date >= %(start)s AND sold_date < %(end)s "
    "AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
)


def _item(row: tuple) -> dict:
    item = {name: value for (_, name), value in zip(_COLUMNS, row, strict=True)}
    if item["soldPrice"] is not None:
        item["soldPrice"] = str(item["soldPrice"])  # numeric(12, 2), exactly
    if isinstance(item["soldDate"], datetime):
        item["soldDate"] = item["soldDate"].isoformat()
    return item


def page_of(conn, query: dict[str, str]) -> tuple[dict, str | None]:
    """The answer to a listing's query, and its next page's query string (None after the last)."""
    size = min(max(int(query.get("pageSize", "1000")), 1), MAX_PAGE_SIZE)
    bounds = {
        "status": query.get("status", "SOLD"),
        "start": datetime.fromisoformat(query["soldFrom"]),
        "end": datetime.fromisoformat(query["soldTo"]),
        "tenant": query.get("tenantId") or None,
    }
    select = f"SELECT {', '.join(c for c, _ in _COLUMNS)} FROM smartgo.products WHERE {_WHERE}"
    order = " ORDER BY sold_date, id LIMIT %(size)s"
    after: dict = {}
    if "page" in query:
        skip = (int(query["page"]) - 1) * size
        rows = conn.execute(
            f"{select}{order} OFFSET %(skip)s", {**bounds, "size": size, "skip": skip}
        )
    elif "offset" in query:
        skip = int(query["offset"])
        rows = conn.execute(
            f"{select}{order} OFFSET %(skip)s", {**bounds, "size": size, "skip": skip}
        )
    else:
        if query.get("cursor"):
            sold, _, product = query["cursor"].partition("|")
            after = {"sold": datetime.fromisoformat(sold), "product": product}
            select += " AND (sold_date, id) > (%(sold)s, %(product)s)"
        rows = conn.execute(f"{select}{order}", {**bounds, **after, "size": size})
    found = rows.fetchall()
    cursor = f"{found[-1][6].isoformat()}|{found[-1][0]}" if len(found) == size else None
    answer = {"items": [_item(row) for row in found], "nextCursor": cursor}
    if not (query.get("cursor") or int(query.get("page", 1)) > 1 or int(query.get("offset", 0))):
        # The day's total, on its first page (counting on every page would cost a scan each).
        count = f"SELECT count(*) FROM smartgo.products WHERE {_WHERE}"
        answer["total"] = conn.execute(count, bounds).fetchone()[0]
    following = None
    if cursor is not None:
        following = {k: v for k, v in query.items() if k not in ("page", "offset")}
        following["cursor"] = cursor
    return answer, None if following is None else urlencode(following)


class SalesApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, conninfo: str, token: str | None = None, port: int = 0):
        self.conninfo, self.token = conninfo, token
        self._connection: psycopg.Connection | None = None
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def page(self, query: dict[str, str]) -> tuple[dict, str | None]:
        """`page_of` on the server's one connection (opened again if it broke), a page at a time."""
        with self._lock:
            if self._connection is None or self._connection.broken:
                self._connection = psycopg.connect(self.conninfo, autocommit=True)
            return page_of(self._connection, query)

    def server_close(self) -> None:
        super().server_close()
        with self._lock:
            if self._connection is not None:
                self._connection.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}{PATH}"


class _Handler(BaseHTTPRequestHandler):
    server: SalesApiServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict, link: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if link:
            self.send_header("Link", f'<{PATH}?{link}>; rel="next"')
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != PATH:
            self._send(404, {"message": "no such route"})
            return
        token = self.server.token
        if token and self.headers.get("Authorization") != f"Bearer {token}":
            self._send(401, {"message": "a bearer token is required"})
            return
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            answer, following = self.server.page(query)
        except (KeyError, ValueError) as error:
            self._send(400, {"message": f"bad query: {error}"})
            return
        self._send(200, answer, following)


def serve_sales_api(conninfo: str, token: str | None = None, port: int = 0) -> SalesApiServer:
    """The API on 127.0.0.1:`port` (0: a free one), in a daemon thread, until `shutdown()`."""
    server = SalesApiServer(conninfo, token, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="sales-api").start()
    return server
