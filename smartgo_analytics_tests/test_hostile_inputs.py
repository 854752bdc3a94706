"""No single input fails a day: whatever one sale's URL, picture or model answer is, and whatever a
SalesData number is, it costs that record alone; `comparables` answers any argument in one line."""

import io
import ipaddress
import json
import os
import subprocess
import sys
from decimal import Decimal

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from smartgo_analytics.comparables import ComparablesError, Source, comparables, read_image_file
from smartgo_analytics.core.imaging import BadImage, prepare_for, visual_features
from smartgo_analytics.core.models.titan import MODEL as TITAN
from smartgo_analytics.core.ndjson import decode_ndjson, encode_ndjson, plain_value
from smartgo_analytics.core.quicksight import DATASETS_BY_NAME, build_dataset
from smartgo_analytics.core.ssrf import UnsafeUrl, forbidden_reason, resolve
from smartgo_analytics.core.vectors import vector_from_answer
from smartgo_analytics.resources.images import ImageFetcher, ImageFetchError
from smartgo_analytics_tests.pipeline import day_rows, insert_products, resources, run, sale

# --- addresses ------------------------------------------------------------------------------------


def _special_networks():
    """The special-purpose blocks `ipaddress` knows (its reading of the IANA registries): every
    network behind its is_private / is_reserved / is_loopback / is_link_local / is_multicast /
    is_site_local / shared-address tests."""
    networks = []
    for constants in (ipaddress._IPv4Constants, ipaddress._IPv6Constants):  # noqa: SLF001
        for name, value in vars(constants).items():
            if name.startswith("_") and name.endswith(("network", "networks")):
                networks.extend(value if isinstance(value, list) else [value])
    return [n for n in networks if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network))]


def _samples(network):
    first, last = int(network.network_address), int(network.broadcast_address)
    kind = type(network.network_address)
    return {kind(first), kind(last), kind((first + last) // 2)}


NON_GLOBAL_V4 = sorted(
    {a for n in _special_networks() if n.version == 4 for a in _samples(n) if not a.is_global}
    | {
        ipaddress.IPv4Address(a)
        for a in ("192.0.0.100", "192.0.0.9", "127.0.0.1", "169.254.169.254")
    }
)
NON_GLOBAL_V6 = sorted(
    {a for n in _special_networks() if n.version == 6 for a in _samples(n) if not a.is_global}
    | {ipaddress.IPv6Address(a) for a in ("fec0::1", "feff::1", "::1", "::")}
)


def embedded_forms(v4: ipaddress.IPv4Address) -> list[str]:
    """The IPv6 forms that carry an IPv4 address: mapped, compatible, 6to4, NAT64 (well-known and
    local-use prefixes) and Teredo (client address stored inverted)."""
    n = int(v4)
    teredo_client = n ^ 0xFFFFFFFF
    return [
        str(ipaddress.IPv6Address((0xFFFF << 32) | n)),
        str(ipaddress.IPv6Address(n)),
        str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1)),
        str(ipaddress.IPv6Address((0x0064FF9B << 96) | n)),
        str(ipaddress.IPv6Address((0x0064FF9B0001 << 80) | n)),
        str(
            ipaddress.IPv6Address(
                (0x20010000 << 96) | (int(ipaddress.IPv4Address("8.8.8.8")) << 64) | teredo_client
            )
        ),
    ]


def test_every_special_purpose_address_and_every_ipv6_form_of_one_is_refused():
    assert len(NON_GLOBAL_V4) > 30 and len(NON_GLOBAL_V6) > 20  # the registries were read
    let_through = [
        str(a) for a in NON_GLOBAL_V4 + NON_GLOBAL_V6 if forbidden_reason(str(a)) is None
    ]
    assert let_through == []
    embedded = [f for a in NON_GLOBAL_V4 for f in embedded_forms(a) if forbidden_reason(f) is None]
    assert embedded == []
    # The measured escapes, by name.
    for address in (
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::1",
        "fec0::1",
        "192.0.0.100",
        "64:ff9b::a9fe:a9fe",
    ):
        assert forbidden_reason(address), address
    # Public addresses, and a 6to4 address of a public one, still pass.
    for address in (
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
        "2002:808:808::1",
    ):
        assert forbidden_reason(address) is None, address


@pytest.mark.parametrize(
    "host", ["a" * 300 + ".example", "exa\u202emple.com", "xn--zz-" + "\u200f" * 3, ".."]
)
def test_a_host_no_resolver_could_encode_is_refused_with_a_reason(host):
    with pytest.raises(UnsafeUrl, match="cannot resolve host"):
        resolve(host, 80)


# --- URLs and model answers, fuzzed ------------------------------------------------------------


class _LoopbackFetcher(ImageFetcher):
    """The real fetcher, its lookups answered without DNS: every host encodes as a resolver would
    (IDNA), then resolves to loopback, which only 'localhost' (allowlisted) may reach."""

    def _resolve(self, host: str, port: int) -> list[str]:
        try:
            host.encode("idna")
        except UnicodeError as error:
            raise UnsafeUrl(f"cannot resolve host {host[:80]!r}: {type(error).__name__}") from None
        return ["127.0.0.1"]


URL_TEXT = st.text(st.characters(codec="utf-8"), max_size=300)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        URL_TEXT,
        st.builds(
            lambda scheme, rest: f"{scheme}://{rest}",
            st.sampled_from(["http", "https", "HTTP", "ftp"]),
            URL_TEXT,
        ),
        st.builds(lambda host, path: f"http://{host}/{path}", URL_TEXT, URL_TEXT),
        st.builds(lambda path: f"http://localhost:{{port}}/{path}", URL_TEXT),
    )
)
def test_any_url_string_is_fetched_or_refused_as_that_sales_error(cdn, url):
    fetcher = _LoopbackFetcher(allowlist=["localhost"], retries=0, timeout_s=2.0)
    url = url.replace("{port}", cdn.rsplit(":", 1)[1])
    try:
        fetcher.fetch(url)
    except ImageFetchError as error:
        assert str(error)  # a reason, for the sale's row
    finally:
        fetcher.teardown_after_execution(None)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=2000),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.lists(JSON_VALUES, min_size=4, max_size=4).map(
            lambda v: json.dumps({"embedding": v}).encode()
        ),
        st.integers(1, 300_000).map(
            lambda depth: b'{"embedding": ' + b"[" * depth + b"]" * depth + b"}"
        ),
        st.integers(300, 5000).map(
            lambda digits: ('{"embedding": [1' + "0" * digits + ", 1, 1, 1]}").encode()
        ),
    )
)
def test_any_answer_body_gives_a_vector_or_that_sales_reason(body):
    try:
        vector = vector_from_answer(body, 4)
    except ValueError as error:
        assert str(error)
    else:
        assert vector.shape == (4,) and vector.dtype.name == "float32"


# --- one day with one sale of each kind ---------------------------------------------------------


def _picture(fmt: str, size=(48, 32), **options) -> bytes:
    buffer = io.BytesIO()
    picture = Image.new("RGB", size, (30, 160, 90))
    picture.paste((220, 40, 40), (0, 0, size[0] // 2, size[1] // 3))  # an asymmetric picture
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rotated_jpeg() -> bytes:
    """The upright picture stored turned a quarter, with the EXIF tag that turns it back."""
    upright = Image.open(io.BytesIO(_picture("PNG")))
    exif = Image.Exif()
    exif[0x0112] = 6  # display turned 90 degrees clockwise
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def _cut_short_jpeg() -> bytes:
    """A JPEG whose header declares 7000 x 7000 pixels and whose data ends after 757 bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (7000, 7000), (200, 30, 30)).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()[:755] + b"\xff\xd9"


def test_one_sale_of_each_crashing_kind_costs_only_itself(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    day = "2025-10-07"  # a day no other test of the session uses
    pictures = {
        "webp": _picture("WEBP"),
        "gif": _picture("GIF"),
        "tiff": _picture("TIFF"),
        "bmp": _picture("BMP"),
        "rotated": _rotated_jpeg(),
        "cut-short": _cut_short_jpeg(),
    }
    cdn_state.images.update({f"/kinds/{name}": data for name, data in pictures.items()})
    bad_urls = {
        "control": (f"{cdn}/ok\x01.png", "control character"),
        "long": (f"{cdn}/" + "a" * 9000 + ".png", "over 8192"),
        "long-label": ("http://" + "a" * 300 + ".example/x.png", "cannot resolve host"),
        "bidi": ("http://exa\u202emple.com/x.png", "cannot resolve host"),
        "bad-port": ("http://localhost:99999/x.png", "refused"),
        "bad-ipv6": ("http://[::1/x.png", "refused"),
        "6to4-loopback": ("http://[2002:7f00:1::1]/x.png", "loopback address 127.0.0.1"),
        "6to4-metadata": ("http://[2002:a9fe:a9fe::1]/x.png", "link-local address 169.254.169.254"),
        "site-local": ("http://[fec0::1]/x.png", "site-local address fec0::1"),
        "ietf-block": ("http://192.0.0.100/x.png", "non-public address"),
        "nat64-loopback": ("http://[64:ff9b::7f00:1]/x.png", "loopback address"),
        # A server no call reaches, that one sale names: its loss is within the budget, so it is
        # given up after its window (30 s by default, 3 s here) as that sale's error, not waited for
        # ten minutes to fail the day.
        "dead-host": ("http://localhost:1/x.png", "CDN localhost:1 was unavailable for"),
    }
    good = [sale(f"GOOD-{n}", day, f"{cdn}/ok.png") for n in range(40)]
    kinds = [sale(f"KIND-{name}", day, f"{cdn}/kinds/{name}") for name in pictures]
    bad = [sale(f"URL-{name}", day, url) for name, (url, _) in bad_urls.items()]
    insert_products(stack.postgres_uri, good + kinds + bad)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)

    result = run(res, day, max_error_ratio=0.5, own_failure_window_s=3)

    assert result.success
    rows = day_rows(res, day)
    assert len(rows) == len(good) + len(kinds) + len(bad)  # none lost
    for name, (_, reason) in bad_urls.items():
        row = rows[f"URL-{name}"]
        assert row["embedding_vector"] is None and reason in row["embedding_error"], (name, row)
    cut = rows["KIND-cut-short"]
    assert (
        cut["embedding_vector"] is None
        and "ends before its declared size" in cut["embedding_error"]
    )
    assert all(len(rows[s["id"]]["embedding_vector"]) == 1024 for s in good)
    # Each copy is the downloaded file, under its own format's extension and registered type.
    s3 = boto3.client("s3", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1")
    expected = {
        "webp": ("webp", "image/webp"),
        "gif": ("gif", "image/gif"),
        "tiff": ("tiff", "image/tiff"),
        "bmp": ("bmp", "image/bmp"),
        "rotated": ("jpg", "image/jpeg"),
    }
    for name, (extension, content_type) in expected.items():
        row = rows[f"KIND-{name}"]
        assert row["embedding_error"] is None and row["image_s3_key"].endswith(f".{extension}"), row
        head = s3.get_object(
            Bucket=s3_bucket, Key=row["image_s3_key"].removeprefix(f"s3://{s3_bucket}/")
        )
        assert head["ContentType"] == content_type and head["Body"].read() == pictures[name]
    # The turned JPEG is embedded upright: as the same picture stored upright, not as it lies.
    upright = visual_features(_picture("JPEG", quality=95))
    buffer = io.BytesIO()
    Image.open(io.BytesIO(_rotated_jpeg())).save(buffer, format="JPEG", quality=95)  # no EXIF
    lying = visual_features(buffer.getvalue())
    rotated = rows["KIND-rotated"]["embedding_vector"]
    assert float(upright @ rotated) > 0.95 > float(lying @ rotated)


def test_orientation_is_applied_at_every_size_and_a_cut_short_picture_is_refused():
    small = prepare_for(_rotated_jpeg(), TITAN.images)
    assert small.resized and (small.width, small.height) == (48, 32)  # turned upright
    big = Image.open(io.BytesIO(_picture("PNG", size=(3000, 2000))))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    big.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", exif=exif)
    large = prepare_for(buffer.getvalue(), TITAN.images)
    assert (large.width, large.height) == (1500, 1000)  # turned upright, decoded at 1/2
    with pytest.raises(
        BadImage, match="ends before its declared size: 7000x7000 pixels in 757 bytes"
    ):
        prepare_for(_cut_short_jpeg(), TITAN.images)
    plain = prepare_for(_picture("JPEG"), TITAN.images)
    assert not plain.resized and plain.source_format.content_type == "image/jpeg"


# --- SalesData numbers and ids ------------------------------------------------------------------


def test_integers_beyond_64_bits_and_ids_that_are_not_ids_are_nulled_or_skipped_with_the_reason():
    raw = [
        {
            "GSI1SK": "STORE#S1",
            "store_id": "S1",
            "transaction_count": Decimal("1E+125"),
            "items_sold": Decimal(2**63),
            "unique_customers": Decimal(-(2**63)),
            "total_revenue": Decimal("1E+125"),
        },
        {"GSI1SK": "STORE#S2", "store_id": b"\x00\x01binary", "transaction_count": Decimal(3)},
        {"GSI1SK": "STORE#S3", "store_id": {"S3", "S4"}, "transaction_count": Decimal(4)},
        {
            "GSI1SK": "STORE#S5",
            "store_id": Decimal(5),
            "store_name": b"\xffname",
            "transaction_count": Decimal(2**63 - 1),
        },
    ]
    # Through the hand-off's JSON, as the export asset stores and reads it.
    items = decode_ndjson(encode_ndjson([plain_value(item)[0] for item in raw]))
    build = build_dataset(DATASETS_BY_NAME["store_summaries"], items, "2025-07-02")

    by_id = {r["store_id"]: r for r in build.records}
    assert set(by_id) == {"S1", "5"}  # the binary and the set ids are skipped
    assert build.skipped == {
        "store_id: a binary value, not a string or whole number": 1,
        "store_id: a list, not a string or whole number": 1,
    }
    s1 = by_id["S1"]
    assert s1["transaction_count"] is None and s1["items_sold"] is None
    assert s1["unique_customers"] == -(2**63) and s1["total_revenue"] == 1e125
    assert build.nulls["transaction_count: integer outside the signed 64-bit range"] == 1
    assert build.nulls["items_sold: integer outside the signed 64-bit range"] == 1
    assert by_id["5"]["transaction_count"] == 2**63 - 1
    assert by_id["5"]["store_name"] == "/25hbWU="  # a binary where text belongs: its base64


# --- comparables' arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"product_id": "x", "tenant": "../x"}, "is not a tenant id"),
        ({"product_id": "x", "tenant": "a" * 500}, "is not a tenant id"),
        ({"product_id": "../../etc/passwd"}, "unknown product"),
        ({"product_id": "SG\n1"}, "unknown product"),
        ({"product_id": "x", "category": "\x00"}, "is not a category"),
        ({"product_id": "x", "condition": "c" * 201}, "is not a condition"),
        ({"product_id": "x", "k": 10**9}, "k must be at most 1000"),
    ],
)
def test_comparables_refuses_arguments_no_sold_item_could_have(arguments, reason):
    with pytest.raises(ComparablesError, match=reason):
        comparables(**arguments, source=Source(resources={"object_store": None}))


def test_a_picture_file_must_be_a_regular_file_within_the_cap_and_is_never_waited_on(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as file:
        file.truncate(10 * 2**30)  # 10 GB of nothing, on no disk
    picture = tmp_path / "ok.png"
    picture.write_bytes(_picture("PNG"))
    for path, reason in [
        (fifo, "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (tmp_path, "not a regular file"),
        (sparse, "over the 10485760 byte limit"),
        (tmp_path / "none", "No such file"),
        ("a\0b", "cannot read"),
        (
            "/proc/self/mem",
            "cannot read .*Input/output error",
        ),  # a "regular file" that refuses reads
    ]:
        with pytest.raises(ComparablesError, match=reason):
            read_image_file(str(path))
    assert read_image_file(str(picture)) == picture.read_bytes()


@pytest.mark.parametrize(
    "arguments",
    [
        ["--product-id", "x", "--tenant", "../x"],
        ["--image", "/dev/zero", "--tenant", "t"],
        ["--image", "http://" + "a" * 300 + ".example/x.png", "--tenant", "t"],
    ],
)
def test_the_comparables_command_answers_a_hostile_argument_in_one_line(arguments, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTGO_")}
    env["SMARTGO_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "smartgo_analytics.cli", "comparables", *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, (
        done.stderr
    )
