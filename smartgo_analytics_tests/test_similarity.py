"""The similarity index, comparables and the embedding-quality check, through real materialisations
against the loopback servers."""

import json
from collections import Counter
from datetime import date

import numpy as np
import psycopg
import pytest
from dagster import materialize

from smartgo_analytics.assets.pricing_intelligence import (
    product_image_embeddings,
    smartgo_sales,
    smartgo_sales_iceberg,
)
from smartgo_analytics.assets.similarity import similarity_index as similarity_assets
from smartgo_analytics.comparables import ComparablesError, Source, comparables, weighted_quantiles
from smartgo_analytics.comparables.answer import similarity_weights
from smartgo_analytics.layout import (
    SIMILARITY_PREFIX,
    similarity_manifest_key,
)
from smartgo_analytics.local.drawings import draw_product_image
from smartgo_analytics.similarity.reader import IndexReader, load_manifest, read_manifest
from smartgo_analytics.similarity.segments import DaySpool, read_items, segment_keys
from smartgo_analytics.similarity.store import day_differences
from smartgo_analytics_tests import servers
from smartgo_analytics_tests.pipeline import day_rows, insert_products, resources, sale

ASSETS = [smartgo_sales, product_image_embeddings, smartgo_sales_iceberg, similarity_assets]
RUN_CONFIG = {"ops": {"product_image_embeddings": {"config": {"max_error_ratio": 0.2}}}}
KINDS = [("Electronics", "Sony"), ("Clothing", "Zara"), ("Toys", "Lego")]


def pictures(cdn_state, cdn, tag: str, brand_of=lambda brand: brand) -> dict:
    """A picture for each kind and model drawn, served by the CDN: (category, brand, variant) -> URL."""
    urls = {}
    for category, brand in KINDS:
        for variant in range(3):
            path = f"/{tag}/{category}-{variant}.png"
            cdn_state.images[path] = draw_product_image(category, brand_of(brand), variant)
            urls[(category, brand, variant)] = f"{cdn}{path}"
    return urls


def day_sales(tenant, day, urls, count, prefix):
    kinds = list(urls)
    return [
        sale(
            f"{prefix}-{day}-{n}",
            day,
            urls[kinds[n % len(kinds)]],
            tenant_id=tenant,
            category=kinds[n % len(kinds)][0],
            brand=kinds[n % len(kinds)][1],
            sold_price=str(10 + n),
        )
        for n in range(count)
    ]


def indexed_products(res, tenant, model: str = servers.TITAN) -> list[str]:
    store = res["object_store"]
    manifest = load_manifest(store, tenant, 1024, model)
    ids = []
    for segment in manifest.segments:
        path = store.local_path(segment_keys(manifest, segment.name)[1])
        try:
            ids += read_items(path).column("product_id").to_pylist()
        finally:
            store.release(path)
    return ids


def table_products(res, days, tenant) -> list[str]:
    return [
        pid
        for day in days
        for pid, row in day_rows(res, day).items()
        if row["tenant_id"] == tenant and row["embedding_vector"] is not None
    ]


def test_the_index_holds_each_days_current_rows_after_reruns_and_a_backfill_and_answers_comparables(
    stack, s3_bucket, bedrock, cdn, cdn_state, tmp_path
):
    tenant, other = "index-a", "index-b"
    days = ("2025-08-04", "2025-08-05", "2025-08-06")
    urls = pictures(cdn_state, cdn, "index")
    insert_products(
        stack.postgres_uri,
        [
            *day_sales(tenant, days[1], urls, 12, "IX"),
            *day_sales(tenant, days[2], urls, 9, "IX"),
            *day_sales(other, days[2], urls, 4, "IY"),
            sale(f"IX-{days[2]}-gone", days[2], f"{cdn}/missing.png", tenant_id=tenant),
        ],
    )
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    for day in days[1:]:
        assert materialize(ASSETS, resources=res, partition_key=day, run_config=RUN_CONFIG).success
    # A backfill of an earlier day, then the first day again after the source changed: two sales
    # are no longer sold and one is new; and the second day again, unchanged.
    insert_products(stack.postgres_uri, day_sales(tenant, days[0], urls, 5, "IX"))
    with psycopg.connect(stack.postgres_uri) as conn:
        conn.execute(
            "UPDATE smartgo.products SET status = 'AVAILABLE' WHERE id IN (%s, %s)",
            (f"IX-{days[1]}-0", f"IX-{days[1]}-1"),
        )
    insert_products(
        stack.postgres_uri,
        [
            sale(
                f"IX-{days[1]}-new",
                days[1],
                urls[KINDS[0] + (0,)],
                tenant_id=tenant,
                sold_price="99",
            )
        ],
    )
    for day in (days[0], days[1], days[1]):
        result = materialize(ASSETS, resources=res, partition_key=day, run_config=RUN_CONFIG)
        assert result.success
    (index_check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "index_matches_table"
    ]
    assert index_check.passed, index_check.description

    indexed = indexed_products(res, tenant)
    assert sorted(indexed) == sorted(table_products(res, days, tenant))
    assert len(indexed) == len(set(indexed)) == 5 + 11 + 9  # no duplicates, the gone two left out
    manifest = load_manifest(res["object_store"], tenant, 1024, servers.TITAN)
    assert manifest.days() == {days[0]: 5, days[1]: 11, days[2]: 9}
    assert sorted(indexed_products(res, other)) == sorted(table_products(res, days, other))

    # The check judges its own day, read back from the index: a day counted twice is caught.
    assert index_check.metadata["day_vectors"].value == 11
    manifest.segments[0].days[days[0]] += 5
    key = similarity_manifest_key(manifest.space, tenant)
    res["object_store"].put_bytes(key, manifest.to_json())
    table = {tenant: 5, other: 0}
    assert day_differences(
        res["object_store"],
        [tenant, other],
        date.fromisoformat(days[0]),
        Counter(table),
        1024,
        servers.TITAN,
    ) == [f"{tenant} {days[0]}: index 10, table 5"]
    manifest.segments[0].days[days[0]] -= 5
    res["object_store"].put_bytes(key, manifest.to_json())

    # Comparables of a sold product: its tenant's, not itself, best first, the same picture first.
    asked = f"IX-{days[2]}-4"  # Clothing, Zara, the second model
    found = comparables(product_id=asked, k=6, source=Source(resources=res))
    assert found.tenant == tenant and len(found.items) == 6
    assert asked not in [item.product_id for item in found.items]
    assert set(item.product_id for item in found.items) <= set(indexed)
    similarities = [item.similarity for item in found.items]
    assert similarities == sorted(similarities, reverse=True)
    rows = {pid: row for day in days for pid, row in day_rows(res, day).items()}
    same_picture = {
        pid
        for pid, row in rows.items()
        if pid != asked
        and row["tenant_id"] == tenant
        and row["image_sha256"] == rows[asked]["image_sha256"]
    }
    assert 0 < len(same_picture) < 6
    assert {i.product_id for i in found.items[: len(same_picture)]} == same_picture
    assert found.items[0].similarity == pytest.approx(1.0, abs=1e-3)
    prices = np.array([i.adjusted_price for i in found.items])
    weights = similarity_weights(np.array([i.similarity for i in found.items]))
    p25, median, p75 = weighted_quantiles(prices, weights, (0.25, 0.5, 0.75))
    assert (found.suggested.median, found.suggested.p25, found.suggested.p75) == (
        pytest.approx(median, abs=0.006),
        pytest.approx(p25, abs=0.006),
        pytest.approx(p75, abs=0.006),
    )
    assert found.suggested.p25 <= found.suggested.median <= found.suggested.p75
    assert found.suggested.comparables == 6

    toys = comparables(product_id=asked, k=3, category="Toys", source=Source(resources=res))
    assert [i.category for i in toys.items] == ["Toys"] * 3
    picture = draw_product_image("Electronics", "Sony", 1)  # sold by both tenants
    by_image = comparables(image=picture, tenant=other, k=2, source=Source(resources=res))
    assert by_image.tenant == other and by_image.items[0].similarity == pytest.approx(1.0, abs=1e-3)
    assert (by_image.items[0].category, by_image.items[0].brand) == ("Electronics", "Sony")

    # Clear errors.
    def error(**kwargs) -> str:
        with pytest.raises(ComparablesError) as raised:
            comparables(source=Source(resources=res), **kwargs)
        return str(raised.value)

    assert (
        error(product_id="IX-nothing") == "unknown product 'IX-nothing': no sold item has that id"
    )
    assert error(product_id=f"IX-{days[2]}-gone").startswith(
        f"product 'IX-{days[2]}-gone' has no vector: image download failed"
    )
    assert error(product_id=asked, tenant="index-empty") == (
        "tenant 'index-empty' has no sold items with a vector in the index"
    )
    assert error(image=picture, tenant="index-empty") == (
        "tenant 'index-empty' has no sold items with a vector in the index"
    )
    assert error(image=picture).startswith("say which tenant with --tenant")
    assert error(image=b"not a picture", tenant=tenant).startswith("not a usable image")
    assert error(product_id=asked, image=picture) == "give exactly one of a product id or an image"

    # An index written with other options (an earlier layout: 8-bit graphs, no centres) is refused,
    # then built again by the next run, whichever days it materialises: the same rows, new files.
    store = res["object_store"]
    before = {t: load_manifest(store, t, 1024, servers.TITAN) for t in (tenant, other)}
    for name, manifest in before.items():
        body = json.loads(manifest.to_json())
        body["index"] = {"metric": "cos", "dtype": "i8", "connectivity": 32, "expansion_add": 64}
        for segment in body["segments"]:
            del segment["centre"], segment["centred_on"]
        store.put_bytes(similarity_manifest_key(manifest.space, name), json.dumps(body).encode())
    assert error(product_id=asked).endswith(
        "materialise similarity_index for any day to build it again"
    )
    assert materialize(ASSETS, resources=res, partition_key=days[1], run_config=RUN_CONFIG).success
    for name, manifest in before.items():  # `other` sold nothing that day: rebuilt all the same
        after = load_manifest(store, name, 1024, servers.TITAN)
        assert not after.stale() and after.days() == manifest.days()
        assert {s.name for s in after.segments}.isdisjoint(s.name for s in manifest.segments)
        listed = set(store.list_keys(f"{SIMILARITY_PREFIX}/{manifest.space}/{name}/"))
        assert listed.isdisjoint(
            k for s in manifest.segments for k in segment_keys(manifest, s.name)
        )
    assert sorted(indexed_products(res, other)) == sorted(table_products(res, days, other))
    again = comparables(product_id=asked, k=6, source=Source(resources=res))
    assert [i.product_id for i in again.items] == [i.product_id for i in found.items]


@pytest.mark.parametrize("broken", ["random", "constant"])
def test_a_day_embedded_by_a_broken_model_fails_the_quality_check(
    stack, s3_bucket, bedrock, bedrock_state, cdn, cdn_state, tmp_path, broken
):
    tenant = f"quality-{broken}"
    good_day, bad_day = {
        "random": ("2025-08-11", "2025-08-12"),
        "constant": ("2025-08-13", "2025-08-14"),
    }[broken]
    # Other brands on the second day: new pictures, so nothing is reused from the first.
    good = pictures(cdn_state, cdn, f"{broken}-good")
    bad = pictures(cdn_state, cdn, f"{broken}-bad", brand_of=lambda brand: f"{brand} {broken}")
    insert_products(
        stack.postgres_uri,
        [
            *day_sales(tenant, good_day, good, 36, "Q" + broken),
            *day_sales(tenant, bad_day, bad, 36, "Q" + broken),
        ],
    )
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)

    def quality(day):
        result = materialize(ASSETS, resources=res, partition_key=day, run_config=RUN_CONFIG)
        assert result.success  # a WARN check: the day is written, and flagged
        (evaluation,) = [
            e
            for e in result.get_asset_check_evaluations()
            if e.check_name == "embeddings_look_right"
        ]
        return evaluation

    healthy = quality(good_day)
    assert healthy.passed, healthy.description
    assert healthy.metadata["neighbour_agreement"].value >= 0.5
    bedrock_state.broken = broken
    try:
        sick = quality(bad_day)
    finally:
        bedrock_state.broken = None
    assert not sick.passed and sick.severity.value == "WARN"
    figures = {key: value.value for key, value in sick.metadata.items()}
    if broken == "random":
        assert figures["neighbour_agreement"] < 0.5 and figures["drift_max"] > 0.2
        assert "neighbour agreement" in sick.description and "drift" in sick.description
    else:
        assert figures["duplicate_vector_share"] == 1.0
        assert "equal another image's" in sick.description
    json.dumps(figures)  # the UI can plot every figure


def test_a_day_joins_and_replaces_its_rows_in_a_loaded_graph(tmp_path, monkeypatch):
    """Once a segment's centre comes from enough vectors, a day is added to its loaded graph and a
    day materialised again is removed from it first: no rebuild, the centre kept."""
    from datetime import UTC, date, datetime

    import pyarrow as pa

    from smartgo_analytics.resources.object_store import LocalObjectStore
    from smartgo_analytics.similarity import update as upkeep
    from smartgo_analytics.similarity.store import commit_day

    monkeypatch.setattr(upkeep, "CENTRE_FROM", 4)
    store = LocalObjectStore(lake_dir=str(tmp_path / "lake"), bucket="b")
    rng = np.random.default_rng(5)
    first, second = date(2025, 9, 1), date(2025, 9, 2)

    def materialise(day, count, tag):
        spool = DaySpool(tmp_path, "t", 16)
        ids = [f"{tag}-{n}" for n in range(count)]
        when = datetime.combine(day, datetime.min.time(), UTC)
        items = pa.record_batch(
            {
                "product_id": ids,
                "category": [None] * count,
                "brand": [None] * count,
                "condition": [None] * count,
                "sold_price": [1.0] * count,
                "sold_date": pa.array([when] * count, pa.timestamp("us", "UTC")),
                "image_sha256": [None] * count,
            }
        )
        vectors = rng.standard_normal((count, 16)).astype(np.float32)
        spool.add(items, vectors)
        commit_day(store, "t", 16, day, spool, tmp_path, "m")
        return dict(zip(ids, vectors, strict=True))

    vectors = materialise(first, 6, "a")
    built = load_manifest(store, "t", 16, "m").segments[0]
    assert built.centred_on == 6
    vectors |= materialise(second, 5, "b")
    again = materialise(first, 3, "c")  # the first day again: other sales
    vectors = {pid: v for pid, v in vectors.items() if not pid.startswith("a")} | again

    manifest = load_manifest(store, "t", 16, "m")
    (segment,) = manifest.segments
    assert segment.days == {first.isoformat(): 3, second.isoformat(): 5}
    assert segment.centred_on == 6 and np.allclose(segment.centre, built.centre)  # not rebuilt
    reader = IndexReader(store)
    index = reader.open(manifest)
    try:
        assert len(index) == 8
        for pid, vector in vectors.items():
            keys, similarities = index.search(vector, 8)
            assert index.items(keys[0][:1]).column("product_id")[0].as_py() == pid
            assert similarities[0][0] == pytest.approx(1.0, abs=1e-3)
            found = index.items(keys[0]).column("product_id").to_pylist()
            assert sorted(found) == sorted(vectors)  # every row once, none of the replaced
    finally:
        reader.close()


def two_days_sold(stack, cdn, cdn_state, tenant: str, days: tuple[str, str], tag: str) -> None:
    """Nine sales of the tenant on each day, the pictures of `pictures` (the same on both days)."""
    urls = pictures(cdn_state, cdn, tag.lower())
    insert_products(
        stack.postgres_uri,
        [*day_sales(tenant, days[0], urls, 9, tag), *day_sales(tenant, days[1], urls, 9, tag)],
    )


def test_a_switch_of_model_at_the_same_dimension_never_mixes_vectors(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    """Titan's vectors and Nova's, both 1024-d: each model has an index of its own, so a switch is
    one setting, the old index keeps serving until then and after a rollback, and no index ever
    holds two models' vectors; the comparables say whose vectors answered."""
    from smartgo_analytics.resources.embeddings import BedrockEmbedder

    tenant, days = "switch-a", ("2025-08-18", "2025-08-19")
    two_days_sold(stack, cdn, cdn_state, tenant, days, "SW")
    titan = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    nova = titan | {
        "image_embedder": BedrockEmbedder(
            endpoint_url=bedrock, region_name="us-east-1", model=servers.NOVA
        )
    }
    store = titan["object_store"]

    def day(res, partition):
        assert materialize(
            ASSETS, resources=res, partition_key=partition, run_config=RUN_CONFIG
        ).success

    def indexed(model):
        manifest = load_manifest(store, tenant, 1024, model)
        return manifest.days(), sorted(indexed_products(titan, tenant, model))

    day(titan, days[0])
    bedrock_calls.reset()
    before = comparables(product_id=f"SW-{days[0]}-3", k=3, source=Source(resources=titan))
    assert before.model == servers.TITAN and before.as_json()["model"] == servers.TITAN

    # The switch: one setting. The new days are Nova's, in Nova's index; Titan's is left as it was.
    day(nova, days[1])
    assert {r["embedding_model"] for r in day_rows(titan, days[1]).values()} == {servers.NOVA}
    assert indexed(servers.NOVA) == ({days[1]: 9}, sorted(table_products(titan, days[1:], tenant)))
    assert indexed(servers.TITAN)[0] == {days[0]: 9}
    # History re-embedded by a backfill of the earlier day: Nova's index has both days.
    day(nova, days[0])
    assert indexed(servers.NOVA) == (
        {days[0]: 9, days[1]: 9},
        sorted(table_products(titan, days, tenant)),
    )
    assert set(bedrock_calls.models) == {servers.NOVA}  # since the switch, only Nova is called
    after = comparables(product_id=f"SW-{days[0]}-3", k=3, source=Source(resources=nova))
    assert after.model == servers.NOVA
    # Another model's vectors, the same neighbours (the double's Nova is Titan's in another basis).
    assert {i.product_id for i in after.items} <= set(table_products(titan, days, tenant))
    picture = draw_product_image("Toys", "Lego", 1)
    asked = comparables(image=picture, tenant=tenant, k=3, source=Source(resources=nova))
    assert asked.model == servers.NOVA

    # The rollback: one setting. Titan's index answers at once; its day again costs no call,
    # each image's Titan vector being kept by model and length.
    again = comparables(product_id=f"SW-{days[0]}-3", k=3, source=Source(resources=titan))
    assert [i.product_id for i in again.items] == [i.product_id for i in before.items]
    calls = bedrock_calls.calls
    day(titan, days[0])
    assert bedrock_calls.calls == calls
    assert {r["embedding_model"] for r in day_rows(titan, days[0]).values()} == {servers.TITAN}
    # Each index holds its own model's vectors only, named in its manifest and its place.
    for model in (servers.TITAN, servers.NOVA):
        (space,) = {
            key.split("/")[1]
            for key in store.list_keys(f"{SIMILARITY_PREFIX}/")
            if model.split(":")[0] in key
        }
        manifest = read_manifest(store, space, tenant)
        assert manifest is not None and manifest.model == model and manifest.space == space

    # The comparison before a switch: both models over both days, the second held out. The double's
    # Nova is Titan's vectors in another basis: the same neighbours, the same prices.
    from smartgo_analytics.model_comparison import compare_models_job

    day(titan, days[1])
    assert bedrock_calls.calls == calls  # the day's pictures' Titan vectors are kept
    held_out = {"held_out_first_day": days[1], "held_out_last_day": days[1]}

    def compare(**config):
        return compare_models_job.execute_in_process(
            run_config={"ops": {"compare_models": {"config": {**held_out, **config}}}},
            resources=titan,
            raise_on_error=False,
        )

    compared = compare(other_model=servers.NOVA)
    assert compared.success
    (event,) = [e for e in compared.all_events if e.event_type_value == "STEP_OUTPUT"]
    figures = {k: v.value for k, v in event.event_specific_data.metadata.items()}
    assert figures["tenants"] == 1 and figures["products_compared"] == 18
    assert figures["neighbour_agreement"] == 1.0 and figures["held_out_sales_priced"] == 9
    assert figures["price_error_other"] == figures["price_error_current"] is not None
    assert figures["other_prices_no_worse"] is True
    observed = [e for e in compared.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert len(observed) == 1
    failed = compare(other_model=servers.NOVA, other_dimension=384)  # no such index
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    reason = failure.step_failure_data.user_failure_data.description
    assert "backfill the other model over those days" in reason


def test_a_shadow_model_embeds_each_day_into_its_own_index_and_is_compared_in_a_check(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    tenant, days = "shadow-a", ("2025-08-25", "2025-08-26")
    two_days_sold(stack, cdn, cdn_state, tenant, days, "SH")
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    # An index in the layout before one index a model: named, no longer read.
    res["object_store"].put_bytes(f"{SIMILARITY_PREFIX}/{tenant}/manifest.json", b"{}")
    shadowed = {**RUN_CONFIG["ops"], "similarity_index": {"config": {"shadow_model": servers.NOVA}}}
    results = [
        materialize(ASSETS, resources=res, partition_key=day, run_config={"ops": shadowed})
        for day in days
    ]
    assert all(result.success for result in results)
    # The serving model's rows and index as they would be without a shadow; the shadow's own index.
    for day in days:
        assert {r["embedding_model"] for r in day_rows(res, day).values()} == {servers.TITAN}
    store = res["object_store"]
    assert load_manifest(store, tenant, 1024, servers.TITAN).days() == {days[0]: 9, days[1]: 9}
    assert load_manifest(store, tenant, 1024, servers.NOVA).days() == {days[0]: 9, days[1]: 9}
    assert set(bedrock_calls.models) == {servers.TITAN, servers.NOVA}
    # The second day, priced from the first by each model: the double's Nova has Titan's
    # neighbours, so the shadow is no worse; the check and the metadata say so.
    (check,) = [
        e
        for e in results[1].get_asset_check_evaluations()
        if e.check_name == "shadow_model_no_worse"
    ]
    assert check.passed
    figures = {k: v.value for k, v in check.metadata.items()}
    assert figures["neighbour_agreement"] == 1.0 and figures["held_out_sales_priced"] == 9
    assert figures["price_error_other"] == figures["price_error_current"]
    index = results[1].asset_materializations_for_node("similarity_index")[0].metadata
    assert index["shadow_model"].value == servers.NOVA and index["legacy_index_tenants"].value == 1
    assert index["shadow_embedding_calls"].value == 0  # the first day's pictures, kept
    assert index["shadow_index_space"].value == "amazon.nova-2-multimodal-embeddings-v1-0.1024d"
    # Without a shadow model the check says there is none.
    plain = materialize(ASSETS, resources=res, partition_key=days[1], run_config=RUN_CONFIG)
    (check,) = [
        e for e in plain.get_asset_check_evaluations() if e.check_name == "shadow_model_no_worse"
    ]
    assert check.passed and "no shadow model" in check.description
