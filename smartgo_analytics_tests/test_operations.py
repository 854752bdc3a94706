"""Alerts, freshness and the production instance storage, through Dagster itself."""

import json
from datetime import datetime, timedelta

import boto3
import psycopg
import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    Definitions,
    asset,
    build_sensor_context,
    define_asset_job,
    instance_for_test,
    materialize,
)

from smartgo_analytics.assets.quicksight import dynamodb_daily_metrics
from smartgo_analytics.core.alerts import redact
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.alerts import Alerter
from smartgo_analytics.resources.dynamodb import SalesDataTable
from smartgo_analytics.resources.object_store import LocalObjectStore
from smartgo_analytics.resources.quicksight import QuickSightExport
from smartgo_analytics.sensors import (
    build_freshness_alert,
    failed_check_alert,
    failed_partition_alert,
)
from smartgo_analytics_tests.servers import WebhookReceiver


@pytest.fixture
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


def tick(sensor, instance, defs, webhook, cursor=None):
    """One evaluation of `sensor`, as the daemon would make it, alerting to `webhook`."""
    context = build_sensor_context(
        instance=instance, definitions=defs, resources={"alerter": alerter(webhook)}, cursor=cursor
    )
    return sensor.evaluate_tick(context)


def alerter(webhook) -> Alerter:
    return Alerter(
        destinations=["log", "slack"],
        slack_webhook_url=webhook.url,
        webserver_url="http://dagster.example:3000",
    )


def failing_metrics_defs(stack, tmp_path, webhook):
    job = define_asset_job("metrics_job", selection=[dynamodb_daily_metrics])
    return Definitions(
        assets=[dynamodb_daily_metrics],
        jobs=[job],
        sensors=[failed_partition_alert],
        resources={
            "sales_data": SalesDataTable(
                table_name="NoSuchTable",
                endpoint_url=stack.aws_endpoint_url,
                region_name="us-east-1",
            ),
            "object_store": LocalObjectStore(lake_dir=str(tmp_path), bucket="lake"),
            "quicksight": QuickSightExport(),
            "alerter": alerter(webhook),
        },
    )


def test_a_failed_partition_sends_one_alert_with_job_asset_partition_error_and_link(
    stack, tmp_path, webhook
):
    defs = failing_metrics_defs(stack, tmp_path, webhook)
    with instance_for_test() as instance:
        first = tick(failed_partition_alert, instance, defs, webhook)
        result = defs.resolve_job_def("metrics_job").execute_in_process(
            partition_key="2025-02-20", instance=instance, raise_on_error=False
        )
        assert not result.success
        second = tick(failed_partition_alert, instance, defs, webhook, cursor=first.cursor)
        assert len(webhook.messages) == 1
        tick(failed_partition_alert, instance, defs, webhook, cursor=second.cursor)
    assert len(webhook.messages) == 1  # re-evaluating sends nothing twice
    text = webhook.texts()[0]
    assert "job: metrics_job" in text and "assets: dynamodb_daily_metrics" in text
    assert "partition: 2025-02-20" in text
    assert "DynamoDB table 'NoSuchTable' does not exist" in text
    assert f"run: http://dagster.example:3000/runs/{result.run_id}" in text
    assert "secret-token" not in text


def test_a_failure_whose_error_quotes_secrets_alerts_without_them(tmp_path, webhook):
    leaked = [
        "p@ss:w/rd",
        "T0123ABCD/B0123ABCD/AbCdEfGhIjKlMnOpQrStUvWx",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ]

    @asset(partitions_def=daily_partitions)
    def leaky():
        raise RuntimeError(
            f"connect postgresql://smartgo:{leaked[0]}@db.internal/smartgo failed; "
            f"retrying hook {leaked[1]} with key {leaked[2]}"
        )

    job = define_asset_job("leaky_job", selection=[leaky])
    defs = Definitions(
        assets=[leaky],
        jobs=[job],
        sensors=[failed_partition_alert],
        resources={"alerter": alerter(webhook)},
    )
    with instance_for_test() as instance:
        first = tick(failed_partition_alert, instance, defs, webhook)
        defs.resolve_job_def("leaky_job").execute_in_process(
            partition_key="2025-02-22", instance=instance, raise_on_error=False
        )
        tick(failed_partition_alert, instance, defs, webhook, cursor=first.cursor)
    (text,) = webhook.texts()
    assert "postgresql://smartgo:***@db.internal/smartgo" in text
    assert not [secret for secret in leaked if secret in text], text


def test_a_failed_error_check_alerts_with_its_partition_and_warn_checks_do_not(tmp_path, webhook):
    @asset(
        partitions_def=daily_partitions,
        check_specs=[
            AssetCheckSpec("always_fails", asset="checked"),
            AssetCheckSpec("only_warns", asset="checked"),
        ],
    )
    def checked():
        yield from ()
        from dagster import MaterializeResult

        yield MaterializeResult(
            check_results=[
                AssetCheckResult(
                    check_name="always_fails",
                    passed=False,
                    severity=AssetCheckSeverity.ERROR,
                    description="12 of 40 sales have no vector",
                ),
                AssetCheckResult(
                    check_name="only_warns", passed=False, severity=AssetCheckSeverity.WARN
                ),
            ]
        )

    defs = Definitions(
        assets=[checked], sensors=[failed_check_alert], resources={"alerter": alerter(webhook)}
    )
    with instance_for_test() as instance:
        cursor = tick(failed_check_alert, instance, defs, webhook).cursor
        materialize([checked], partition_key="2025-02-21", instance=instance)
        cursor = tick(failed_check_alert, instance, defs, webhook, cursor=cursor).cursor
        tick(failed_check_alert, instance, defs, webhook, cursor=cursor)
    assert len(webhook.messages) == 1
    text = webhook.texts()[0]
    assert (
        "check always_fails failed" in text
        and "partition: 2025-02-21" in text
        and "12 of 40 sales" in text
    )


class Clock:
    def __init__(self, now: str):
        self.now = datetime.fromisoformat(now)

    def __call__(self) -> datetime:
        return self.now


def freshness(webhook, clock):
    @asset(partitions_def=daily_partitions)
    def daily_thing():
        return None

    sensor = build_freshness_alert([daily_thing.key], deadline_hour=6, clock=clock)
    defs = Definitions(
        assets=[daily_thing], sensors=[sensor], resources={"alerter": alerter(webhook)}
    )
    return sensor, defs


def test_a_day_not_materialised_by_the_deadline_alerts_once(webhook):
    sensor, defs = freshness(webhook, Clock("2025-03-10T07:00:00+00:00"))
    running_since_2024 = json.dumps({"since": "2024-01-01T00:00:00+00:00"})
    with instance_for_test() as instance:
        result = tick(sensor, instance, defs, webhook, cursor=running_since_2024)
        tick(sensor, instance, defs, webhook, cursor=result.cursor)
    assert len(webhook.messages) == 1
    assert "a day is late" in webhook.texts()[0] and "partition: 2025-03-09" in webhook.texts()[0]


def test_a_first_start_does_not_alert_for_days_whose_run_was_due_before_it(webhook):
    clock = Clock("2025-03-10T07:00:00+00:00")
    sensor, defs = freshness(webhook, clock)
    with instance_for_test() as instance:
        first = tick(sensor, instance, defs, webhook)
        assert webhook.messages == []
        assert "before this deployment first ran" in first.skip_message

        clock.now += timedelta(days=1)  # 2025-03-10 was due at 03:00 on the 11th, after the start
        tick(sensor, instance, defs, webhook, cursor=first.cursor)
    assert len(webhook.messages) == 1 and "partition: 2025-03-10" in webhook.texts()[0]


def test_alerts_can_go_to_an_sns_topic(stack):
    sns = boto3.client("sns", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1")
    topic = sns.create_topic(Name="alerts-test")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts-test")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    from smartgo_analytics.core.alerts import Alert

    Alerter(
        destinations=["sns"],
        sns_topic_arn=topic,
        endpoint_url=stack.aws_endpoint_url,
        region_name="us-east-1",
    ).send(Alert(title="t", error="boom", partition="2025-02-22"))
    body = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=2)["Messages"][0]["Body"]
    assert "partition: 2025-02-22" in body and "error: boom" in body


def test_secrets_are_redacted_from_alert_text():
    text = redact(
        "cannot connect postgresql://smartgo:hunter2@db:5432/x; webhook https://hooks.slack.com/services/T1/B2/xyz; "
        '{"password": "s3cret"}',
        ["sometoken"],
    )
    assert "hunter2" not in text and "xyz" not in text and "s3cret" not in text
    assert "postgresql://smartgo:***@db:5432/x" in text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connect postgresql://smartgo:p@ss:w/rd@db.internal:5432/x failed", "p@ss:w/rd"),
        ("connect postgresql://smartgo:p@ss@db.internal/x failed", "p@ss"),
        ("url 'https://admin:a:b@c/d@example.com/path' refused", "a:b@c/d"),
        ("conninfo host=db user=smartgo password='with space@:/' dbname=x", "with space@:/"),
        ('{"password": "s3cr:t@/x", "port": 5432}', "s3cr:t@/x"),
        (
            "posting to T0123ABCD/B0123ABCD/AbCdEfGhIjKlMnOpQrStUvWx failed",
            "AbCdEfGhIjKlMnOpQrStUvWx",
        ),
        (
            "signature mismatch for key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        ("aws_secret_access_key=abc/DEF+ghi", "abc/DEF+ghi"),
    ],
)
def test_secrets_with_awkward_characters_or_no_context_are_redacted_too(text, secret):
    redacted = redact(text)
    assert secret not in redacted and "***" in redacted
    assert redact("image 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b failed") == (
        "image 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b failed"  # a hex digest is not a secret
    )


def test_a_partition_materialises_against_a_postgres_backed_instance(stack, tmp_path):
    import json

    from dagster import DagsterInstance

    from smartgo_analytics.local.demo_data import sales_data_items
    from smartgo_analytics.local.stack import create_sales_table

    with psycopg.connect(
        stack.postgres_uri.replace("/smartgo?", "/postgres?"), autocommit=True
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'dagster_test'").fetchone():
            conn.execute("CREATE DATABASE dagster_test")
    # SQLAlchemy 2.1 defaults postgresql:// to psycopg 3; dagster-postgres speaks psycopg2.
    url = stack.postgres_uri.replace("/smartgo?", "/dagster_test?").replace(
        "postgresql://", "postgresql+psycopg2://"
    )
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    create_sales_table(dynamodb, "SalesData-pg-instance")
    from datetime import date

    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    for item in sales_data_items(date(2025, 2, 23)):
        dynamodb.put_item(
            TableName="SalesData-pg-instance",
            Item={k: serializer.serialize(v) for k, v in item.items()},
        )
    resources = {
        "sales_data": SalesDataTable(
            table_name="SalesData-pg-instance",
            endpoint_url=stack.aws_endpoint_url,
            region_name="us-east-1",
        ),
        "object_store": LocalObjectStore(lake_dir=str(tmp_path), bucket="lake"),
    }
    with instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        materialize(
            [dynamodb_daily_metrics],
            resources=resources,
            partition_key="2025-02-23",
            instance=instance,
        )
        assert isinstance(instance, DagsterInstance)
    with psycopg.connect(url.replace("+psycopg2", "")) as conn:
        rows = conn.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'").fetchone()[0]
        assert rows >= 1
        partitions = conn.execute(
            "SELECT DISTINCT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        ).fetchall()
    assert ("2025-02-23",) in partitions
    assert json.loads(
        (tmp_path / "lake" / "staging/dynamodb_daily_metrics/2025-02-23.ndjson")
        .read_text()
        .splitlines()[0]
    )


def test_the_production_instance_config_is_valid_for_dagster(monkeypatch):
    from pathlib import Path

    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_aws.ecs import EcsRunLauncher

    for name in (
        "DAGSTER_PG_USERNAME",
        "DAGSTER_PG_PASSWORD",
        "DAGSTER_PG_HOST",
        "DAGSTER_PG_DB",
        "DAGSTER_COMPUTE_LOG_BUCKET",
    ):
        monkeypatch.setenv(name, "x")
    config, _ = dagster_instance_config(str(Path(__file__).parents[1] / "deploy"))
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    launcher = config["run_launcher"]
    assert launcher["class"] == "EcsRunLauncher"
    assert process_config(EcsRunLauncher.config_type(), launcher["config"]).success


def test_one_tick_that_sees_several_runs_alerts_each_failure_once_though_a_destination_fails(stack):
    """Failed runs, a retried one, a clean one and one with a failed ERROR check, all seen by one
    tick of each sensor: an alert per failure through SNS, though Slack answers 500 every time."""
    sns = boto3.client("sns", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1")
    topic = sns.create_topic(Name="alerts-one-tick")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts-one-tick")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn["QueueArn"],
        Attributes={"RawMessageDelivery": "true"},
    )
    broken_slack = WebhookReceiver(status=500)
    alerts = Alerter(
        destinations=["slack", "sns"],
        slack_webhook_url=broken_slack.url,
        sns_topic_arn=topic,
        endpoint_url=stack.aws_endpoint_url,
        region_name="us-east-1",
    )

    @asset(
        partitions_def=daily_partitions,
        check_specs=[AssetCheckSpec("holds", asset="flaky", partitions_def=daily_partitions)],
    )
    def flaky(context):
        if context.partition_key.endswith("-01"):
            raise RuntimeError(f"source down for {context.partition_key}")
        from dagster import MaterializeResult

        broken = context.partition_key.endswith("-03")
        return MaterializeResult(
            check_results=[
                AssetCheckResult(
                    passed=not broken, severity=AssetCheckSeverity.ERROR, description="3 rows lost"
                )
            ]
        )

    job = define_asset_job("flaky_job", selection=[flaky])
    defs = Definitions(
        assets=[flaky],
        jobs=[job],
        resources={"alerter": alerts},
        sensors=[failed_partition_alert, failed_check_alert],
    )

    def evaluate(sensor, cursor):
        context = build_sensor_context(
            instance=instance, definitions=defs, resources={"alerter": alerts}, cursor=cursor
        )
        return sensor.evaluate_tick(context).cursor

    with instance_for_test() as instance:
        cursors = {s: evaluate(s, None) for s in (failed_partition_alert, failed_check_alert)}
        runs = [
            ("2025-04-01", {}),
            ("2025-05-01", {}),
            ("2025-06-01", {"dagster/will_retry": "true"}),
            ("2025-04-02", {}),
            ("2025-04-03", {}),
            ("2025-04-04", {}),
        ]
        for day, tags in runs:
            defs.resolve_job_def("flaky_job").execute_in_process(
                partition_key=day, instance=instance, raise_on_error=False, tags=tags
            )
        for _ in range(3):  # the daemon evaluates again and again
            cursors = {s: evaluate(s, c) for s, c in cursors.items()}
    bodies = []
    while messages := sqs.receive_message(
        QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages"):
        bodies += [m["Body"] for m in messages]
        sqs.delete_message_batch(
            QueueUrl=queue,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
    partitions = sorted(
        line for body in bodies for line in body.splitlines() if line.startswith("partition:")
    )
    assert partitions == ["partition: 2025-04-01", "partition: 2025-04-03", "partition: 2025-05-01"]
    assert len(broken_slack.messages) == 3  # each tried once, not again on the next ticks
    assert any("check holds failed" in b and "3 rows lost" in b for b in bodies)
    broken_slack.server.shutdown()


@pytest.mark.parametrize("config", ["dagster.yaml", "deploy/dagster.yaml"])
def test_a_step_that_failed_alerts_after_one_run_and_a_crashed_run_worker_is_run_again(
    config, tmp_path, webhook
):
    from pathlib import Path

    import yaml
    from dagster import DagsterInstance, Failure

    retries = yaml.safe_load((Path(__file__).parents[1] / config).read_text())["run_retries"]
    assert retries == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({"run_retries": retries}))

    @asset(partitions_def=daily_partitions)
    def misconfigured():
        raise Failure("SMARTGO_DATABASE_URL: password authentication failed", allow_retries=False)

    job = define_asset_job("misconfigured_job", selection=[misconfigured])
    defs = Definitions(assets=[misconfigured], jobs=[job], sensors=[failed_partition_alert])
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        first = tick(failed_partition_alert, instance, defs, webhook)
        failed = defs.resolve_job_def("misconfigured_job").execute_in_process(
            partition_key="2025-03-17", instance=instance, raise_on_error=False
        )
        # What the instance decided when the run failed, and the daemon follows: not again.
        assert instance.get_run_by_id(failed.run_id).tags["dagster/will_retry"] == "false"
        # A run whose worker died, marked failed from outside (as run monitoring does): again.
        crashed = instance.create_run_for_job(
            defs.resolve_job_def("misconfigured_job"), tags={"dagster/partition": "2025-03-18"}
        )
        instance.report_run_failed(crashed, "the run worker's process exited with code 137")
        assert instance.get_run_by_id(crashed.run_id).tags["dagster/will_retry"] == "true"
        tick(failed_partition_alert, instance, defs, webhook, cursor=first.cursor)
    # One alert, for the step that failed, after its one run; none yet for the crashed run.
    assert [t for t in webhook.texts() if "partition: " in t] == [
        t for t in webhook.texts() if "partition: 2025-03-17" in t
    ]
    assert len(webhook.messages) == 1 and "password authentication failed" in webhook.texts()[0]
