"""The comparables page (`smartgo-analytics web`): ask by product id or by picture, see the
comparables' pictures, prices and the suggested price band; `/api/comparables` answers the same
question as JSON, as `smartgo-analytics comparables --format json` prints it.

Pictures come from the object store: the local lake's files through `/pictures/<key>` (only keys
under the image prefix, checked and resolved inside it), S3's through short-lived presigned URLs.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from smartgo_analytics.comparables import MAX_IMAGE_BYTES, MAX_K, Comparables, ComparablesError
from smartgo_analytics.core.imaging import BadImage, thumbnail_jpeg
from smartgo_analytics.lake import sale_rows
from smartgo_analytics.layout import IMAGE_PREFIX
from smartgo_analytics.local.stack import StackError
from smartgo_analytics.web.answers import PICTURE_TYPES, Answers
from smartgo_analytics.web.chart import price_chart
from smartgo_analytics.web.forms import (
    FIELDS,
    FORM_BYTES,
    Refused,
    question_of,
    read_body,
    read_form,
)
from smartgo_analytics.web.guard import Guard, GuardMiddleware

log = logging.getLogger("smartgo_analytics.web")
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)


def answer_json(found: Comparables) -> dict:
    """What `smartgo-analytics comparables --format json` prints."""
    return found.as_json()


def create_app(answers: Answers | None = None, guard: Guard | None = None) -> Starlette:
    """The page and its API over `answers` (the deployment's by default), behind `guard` (the
    loopback names only, by default)."""
    answers = answers or Answers()
    guard = guard or Guard()
    endpoint = getattr(answers.store, "endpoint_url", None)
    if endpoint:  # presigned pictures from an S3-compatible endpoint of its own
        parts = urlsplit(endpoint)
        guard = dataclasses.replace(guard, picture_origins=(f"{parts.scheme}://{parts.netloc}",))

    async def page(request: Request) -> Response:
        fields = dict(request.query_params)
        nonce = request.state.csp_nonce
        picture = None
        try:
            if request.method == "POST":
                fields, picture = await read_form(request, MAX_IMAGE_BYTES + FORM_BYTES)
                if picture is None and not fields.get("product_id") and not fields.get("image_url"):
                    raise ComparablesError("choose a picture to upload, or give a product id")
            elif not fields.get("product_id"):
                # Reaching out for a URL is a POST from the page: a link or an <img> elsewhere
                # only fills the form in.
                return _render(fields, nonce)
            question = question_of(fields, picture)
            found, picture = await run_in_threadpool(answers.ask, question)
            shown = await run_in_threadpool(_shown_answer, answers, found, question, picture)
            return _render(fields, nonce, answer=shown)
        except (ComparablesError, Refused) as error:
            return _render(fields, nonce, error=str(error), status=getattr(error, "status", 400))
        except Exception:
            log.exception("the comparables page failed")
            return _render(
                fields, nonce, error="the answer failed on the server (see its log)", status=500
            )

    async def api(request: Request) -> Response:
        try:
            fields, picture = dict(request.query_params), None
            if request.method == "POST":
                content_type = request.headers.get("content-type", "")
                if content_type.startswith("image/") or content_type == "application/octet-stream":
                    picture = await read_body(request, MAX_IMAGE_BYTES + FORM_BYTES)
                else:
                    form, picture = await read_form(request, MAX_IMAGE_BYTES + FORM_BYTES)
                    fields |= form
            elif fields.get("image_url"):
                raise Refused("a picture's URL is asked with POST (a form field image_url)", 405)
            found, _ = await run_in_threadpool(answers.ask, question_of(fields, picture))
            return JSONResponse(answer_json(found))
        except (ComparablesError, Refused) as error:
            return JSONResponse({"error": str(error)}, status_code=getattr(error, "status", 400))
        except Exception:
            log.exception("the comparables API failed")
            return JSONResponse({"error": "the answer failed on the server (see its log)"}, 500)

    async def picture(request: Request) -> Response:
        path = answers.local_picture(request.path_params["key"])
        if path is None:
            return Response("no such picture", 404, media_type="text/plain")
        return FileResponse(
            path,
            media_type=PICTURE_TYPES[path.suffix[1:].lower()],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"},
        )

    async def sale(request: Request) -> Response:
        product_id = request.path_params["product_id"]
        try:
            rows = await run_in_threadpool(
                _sale_rows, answers.catalog, product_id, request.query_params.get("tenant")
            )
        except StackError:
            return JSONResponse({"error": "no data yet: run `smartgo-analytics demo` first"}, 404)
        except Exception:
            log.exception("reading a sale failed")
            return JSONResponse(
                {"error": "the table could not be read (see the server's log)"}, 500
            )
        if not rows:
            return JSONResponse({"error": f"no sale of product {product_id[:100]!r}"}, 404)
        return JSONResponse(rows)

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET", "POST"]),
            Route("/api/comparables", api, methods=["GET", "POST"]),
            Route("/api/sales/{product_id}", sale),
            Route("/pictures/{key:path}", picture),
        ],
        lifespan=_closing(answers),
        middleware=[Middleware(GuardMiddleware, guard=guard)],
    )
    app.state.answers = answers
    return app


def _closing(answers: Answers):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        answers.close()

    return lifespan


def _shown_answer(
    answers: Answers, found: Comparables, question: dict, picture: bytes | None
) -> dict:
    band = found.suggested
    urls = answers.picture_urls(found)
    items = [
        {
            **item.__dict__,
            "picture": url,
            "sale": answers.sale_link(item.product_id, found.tenant),
            "day": answers.day_link(item.sold_date),
        }
        for item, url in zip(found.items, urls, strict=True)
    ]
    if picture is not None:
        query_picture = _data_uri(picture)
    else:
        query_picture = answers.picture_url(found.tenant, question["product_id"], None)
    chart = price_chart(
        [i.sold_price if i.adjusted_price is None else i.adjusted_price for i in found.items],
        [i.similarity for i in found.items],
        band.median,
        band.p25,
        band.p75,
    )
    return {
        "tenant": found.tenant,
        "query": found.query,
        "model": found.model,
        "band": band,
        "strength": found.strength,
        "asked": found.asked or {},
        "categories": found.categories or {},
        "items": items,
        "query_picture": query_picture,
        "chart": chart,
    }


def _data_uri(data: bytes) -> str | None:
    try:
        return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(data)).decode("ascii")
    except BadImage:
        return None


def _render(
    fields: dict,
    nonce: str,
    answer: dict | None = None,
    error: str | None = None,
    status: int = 200,
):
    html = TEMPLATES.get_template("page.html").render(
        nonce=nonce,
        fields={name: fields.get(name, "") for name in FIELDS},
        answer=answer,
        error=error,
        max_k=MAX_K,
        max_mb=MAX_IMAGE_BYTES // 2**20,
    )
    return HTMLResponse(html, status)


def _sale_rows(opened_catalog, product_id: str, tenant: str | None) -> list[dict]:
    """The table's rows of a product (its vector left out), as `smartgo-analytics query` reads them."""
    with opened_catalog() as catalog:
        rows = sale_rows(catalog, product_id, tenant)
    return [
        {
            k: _without_path(v if isinstance(v, int | float | str | None) else str(v))
            for k, v in row.items()
        }
        for row in rows
    ]


def _without_path(value):
    """A local copy's file URI as its object key: an answer never shows where the server keeps
    its files."""
    if isinstance(value, str) and value.startswith("file://") and f"/{IMAGE_PREFIX}/" in value:
        return IMAGE_PREFIX + "/" + value.split(f"/{IMAGE_PREFIX}/", 1)[1]
    return value
