"""The page's questions as they arrive: a query string, a form streamed in with limits on its
parts, size and time, or a picture as the body."""

from __future__ import annotations

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from smartgo_analytics.comparables import MAX_K, ComparablesError
from smartgo_analytics.web.guard import BodyTooSlow

FIELDS = ("product_id", "image_url", "tenant", "category", "condition", "k", "any_category")
FORM_BYTES = 64 * 1024  # an upload's form fields and multipart framing, beside the picture


class Refused(Exception):
    """A question the page cannot take (too large, not a form): a message and an HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def question_of(fields: dict[str, str], picture: bytes | None = None) -> dict:
    """The comparables() arguments of a form or a query string; ComparablesError for a bad k."""
    given = {name: (fields.get(name) or "").strip() or None for name in FIELDS}
    raw_k = given.pop("k") or "10"
    try:
        k = int(raw_k)
    except ValueError:
        raise ComparablesError(
            f"k must be a whole number from 1 to {MAX_K}, got {raw_k[:20]!r}"
        ) from None
    any_category = (given.pop("any_category") or "").lower() in ("1", "true", "yes", "on")
    url = given.pop("image_url")
    image: str | bytes | None = picture if picture is not None else url
    if isinstance(image, str) and not image.startswith(("http://", "https://")):
        raise ComparablesError("the picture's URL must start with http:// or https://")
    return {**given, "image": image, "k": k, "any_category": any_category}


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) past `limit` bytes before more is read."""
    chunks = [chunk async for chunk in _limited(request, limit)]
    return b"".join(chunks)


async def _limited(request: Request, limit: int):
    """The body's pieces as they arrive, refused (413) past `limit` bytes, (408) when too slow."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(f"the upload is {int(declared)} bytes, over the {limit} byte limit", 413)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(f"the upload is over the {limit} byte limit", 413)
            yield chunk
    except BodyTooSlow as error:
        raise Refused(str(error), 408) from None


async def read_form(request: Request, limit: int) -> tuple[dict[str, str], bytes | None]:
    """A multipart/form-data body's text fields and its `picture` file (None when empty), parsed as
    it streams in (python-multipart), with limits on its parts: a body of a hundred thousand
    empty parts is refused at the first one too many, not parsed whole."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Refused("send the picture as a form upload (multipart/form-data)", 415)
    parser = MultiPartParser(
        request.headers,
        _limited(request, limit),
        max_files=1,
        max_fields=len(FIELDS) + 1,
        max_part_size=FORM_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise Refused(f"the form upload could not be read: {error}") from None
    fields, picture = {}, None
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                if name in FIELDS:
                    fields[name] = value
            elif name == "picture" and value.filename is not None:
                picture = await value.read() or None
    finally:
        await form.close()
    return fields, picture
