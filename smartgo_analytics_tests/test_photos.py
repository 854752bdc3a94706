"""The pictures production sends: phone and camera photos, screenshots, WebP, HEIC."""

import io

import pytest
from PIL import Image

from smartgo_analytics.core.imaging import BadImage, decoded, prepare_for
from smartgo_analytics.core.models.titan import MODEL as TITAN
from smartgo_analytics.local.photos import photo_corpus, stamped
from smartgo_analytics_tests import servers
from smartgo_analytics_tests.pipeline import day_rows, insert_products, resources, run, sale


@pytest.fixture(scope="module")
def corpus():
    return {photo.name: photo.data for photo in photo_corpus()}


def test_the_corpus_has_the_sizes_and_kinds_of_real_photos(corpus):
    kinds = {}
    for name, data in corpus.items():
        with Image.open(io.BytesIO(data)) as image:
            kinds[name] = (image.format, image.mode, image.size, len(data))
    phones = [k for n, k in kinds.items() if n.startswith("12MP") and k[0] == "JPEG"]
    assert len(phones) >= 5 and all(k[2] == (4032, 3024) for k in phones)
    assert all(2_000_000 <= k[3] <= 5_500_000 for k in phones), phones
    assert {k[1] for k in phones} >= {"RGB", "CMYK"}
    assert max(k[2][0] * k[2][1] for k in kinds.values()) >= 24_000_000
    assert {k[0] for k in kinds.values()} >= {"JPEG", "PNG", "WEBP"}


def test_every_photo_is_prepared_within_titans_side_upright_without_resampling_a_jpeg(corpus):
    for name, data in corpus.items():
        prepared = prepare_for(data, TITAN.images)
        with Image.open(io.BytesIO(prepared.data)) as sent:
            assert sent.format in ("JPEG", "PNG") and sent.mode in ("RGB", "RGBA"), name
            assert sent.size == (prepared.width, prepared.height), name
        assert 1024 < max(prepared.width, prepared.height) <= 2048, name
        assert prepared.resized, name
        if "orientation" in name:  # stored landscape, shown portrait
            assert prepared.height > prepared.width, name
        if name.startswith(("12MP", "24MP")) and "WebP" not in name:
            # The JPEG decoder's own reduction gives the size sent: no second shrink.
            with decoded(data, within=2048) as image:
                assert sorted(image.size) == sorted((prepared.width, prepared.height)), name


def test_a_screenshot_keeps_its_transparency_and_a_stamped_photo_is_the_same_picture(corpus):
    screenshot = prepare_for(corpus["PNG screenshot with alpha"], TITAN.images)
    assert screenshot.extension == "png"
    with Image.open(io.BytesIO(screenshot.data)) as image:
        assert image.mode == "RGBA" and image.getpixel((5, 5))[3] == 0
    photo = corpus["12MP landscape, baseline"]
    assert (
        prepare_for(stamped(photo, 7), TITAN.images).data == prepare_for(photo, TITAN.images).data
    )


def test_a_heic_picture_is_refused_with_a_reason_that_says_what_to_send_instead():
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 4000
    with pytest.raises(BadImage, match="HEIC pictures are not embedded: upload a JPEG"):
        prepare_for(heic, TITAN.images)
    with pytest.raises(BadImage, match="^not an image$"):
        prepare_for(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 4000, TITAN.images)


def test_a_small_day_of_photos_uses_the_worker_processes_and_as_many_drawings_do_not(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path, corpus
):
    photos = [corpus[n] for n in corpus if n.startswith("12MP") and "WebP" not in n]
    days = {"2025-09-21": "photo", "2025-09-22": "drawing"}
    for day, kind in days.items():
        for n in range(30):
            picture = stamped(photos[n % len(photos)], n) if kind == "photo" else None
            cdn_state.images[f"/{kind}-{n}.jpg"] = picture or servers.png((8 * n, 90, 30))
        insert_products(
            stack.postgres_uri,
            [sale(f"{kind}-{n:02d}", day, f"{cdn}/{kind}-{n}.jpg") for n in range(30)],
        )
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    used = {}
    for day, kind in days.items():
        result = run(res, day, worker_processes=2, worker_min_cpu_s=1.0, worker_probe_sales=6)
        metadata = result.asset_materializations_for_node("product_image_embeddings")[0].metadata
        assert metadata["embedded"].value == 30, kind
        used[kind] = (
            metadata["worker_processes"].value,
            metadata["first_sales_cpu_ms_per_sale"].value,
        )
    # 24 photos after the first 6 cost well over a second of CPU; 24 drawings a fraction of one.
    assert used["photo"][0] == 2 and used["drawing"][0] == 1, used
    assert used["photo"][1] > 4 * used["drawing"][1], used
    rows = day_rows(res, "2025-09-21")
    assert len(rows) == 30 and all(r["embedding_vector"] is not None for r in rows.values())
