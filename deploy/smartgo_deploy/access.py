"""What each role of the deployment may do, in one place: the actions its code makes, on this
stack's resources. `stack.py` turns these into the roles' policies; `test_deploy.py` holds them to
the AWS calls the code is recorded making (`smartgo_analytics_tests/aws_calls.py`).

No action is a wildcard. `Resource: "*"` appears only for actions AWS gives no resource-level
permission (each named where it is granted, in ANY_RESOURCE).
"""

from __future__ import annotations

from dataclasses import dataclass

# Actions for which AWS offers no resource-level permission: the only ones granted on "*".
ANY_RESOURCE = {
    "ec2:DescribeNetworkInterfaces": "the ECS run launcher reads its own task's network",
    "ecr:GetAuthorizationToken": "pulling the image (the execution role)",
    "ecs:DescribeTaskDefinition": "the run launcher reads the run task definition",
}


@dataclass(frozen=True)
class Grant:
    """Actions on the resources named by `on` (keys of the stack's resource ARNs)."""

    actions: tuple[str, ...]
    on: tuple[str, ...]
    why: str


# The data bucket: sales hand-offs, images, the similarity index, QuickSight exports, the
# warehouse of the Glue catalog, batch inference files.
OBJECTS_READ = ("s3:GetObject",)
OBJECTS_WRITE = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
BUCKET_LIST = ("s3:ListBucket",)

GLUE_READ = ("glue:GetDatabase", "glue:GetTable")
# The tables are the pipeline's to make (their schema and partition spec are the code's): the
# database is the stack's.
GLUE_WRITE = (*GLUE_READ, "glue:CreateTable", "glue:UpdateTable")
S3TABLES_READ = (
    "s3tables:GetTableBucket",
    "s3tables:GetNamespace",
    "s3tables:GetTable",
    "s3tables:GetTableMetadataLocation",
    "s3tables:GetTableData",
)
S3TABLES_WRITE = (
    *S3TABLES_READ,
    "s3tables:CreateTable",
    "s3tables:UpdateTableMetadataLocation",
    "s3tables:PutTableData",
    # the documented retention, set when the pipeline makes a table and by its weekly care
    "s3tables:PutTableMaintenanceConfiguration",
)

PIPELINE = (
    Grant(OBJECTS_WRITE, ("data_objects",), "hand-offs, images, index, exports, warehouse files"),
    Grant(BUCKET_LIST, ("data_bucket",), "listing index segments, hand-offs, exports"),
    Grant(("s3:PutObject",), ("compute_log_objects",), "the runs' compute logs"),
    Grant(
        (
            "dynamodb:DescribeTable",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:BatchGetItem",
            "dynamodb:BatchWriteItem",
        ),
        ("image_vectors_table", "export_progress_table"),
        "image vectors and export progress: the pipeline's own tables",
    ),  # fmt: skip
    Grant(
        ("dynamodb:DescribeTable", "dynamodb:Query"),
        ("sales_data_table",),
        "SalesData, read for the QuickSight datasets",
    ),
    Grant(("bedrock:InvokeModel",), ("embedding_models",), "embedding each image"),
    Grant(
        ("bedrock:CreateModelInvocationJob",),
        ("embedding_models", "batch_jobs"),
        "re-embedding history by batch",
    ),
    Grant(
        ("bedrock:GetModelInvocationJob", "bedrock:StopModelInvocationJob"),
        ("batch_jobs",),
        "polling, and stopping an interrupted batch job",
    ),
    Grant(("iam:PassRole",), ("batch_role",), "the batch job's service role, to Bedrock only"),
    Grant(
        ("ssm:GetParameter",),
        ("database_parameter", "api_token_parameter"),
        "the SmartGo database's JSON and the API token (Secrets Manager, through SSM)",
    ),
    Grant(
        ("secretsmanager:GetSecretValue",),
        ("database_secret", "api_token_secret"),
        "what those parameters refer to",
    ),
    Grant(("sns:Publish",), ("alert_topic",), "alerts on failed partitions"),
    Grant(
        ("quicksight:CreateIngestion", "quicksight:DescribeIngestion"),
        ("quicksight_datasets",),
        "refreshing the datasets (a retried step reads the ingestion it started)",
    ),
    Grant(
        ("glue:GetDatabase", *GLUE_WRITE),
        ("glue_catalog", "glue_database", "glue_tables"),
        "the Iceberg tables in Glue",
    ),  # fmt: skip
    Grant(
        S3TABLES_WRITE, ("table_bucket", "table_bucket_tables"), "the Iceberg tables in S3 Tables"
    ),
)

# The code location runs schedules and sensors: the alert sensors publish.
CODE_LOCATION = (Grant(("sns:Publish",), ("alert_topic",), "alerts on failed partitions"),)

# The webserver shows compute logs and terminates runs (through the run launcher).
WEBSERVER = (
    Grant(OBJECTS_READ, ("compute_log_objects",), "reading compute logs"),
    Grant(BUCKET_LIST, ("compute_log_bucket",), "listing compute logs"),
    Grant(("ecs:DescribeTasks", "ecs:StopTask"), ("run_tasks",), "terminating a run"),
)

# The daemon launches each run as an ECS task (EcsRunLauncher) and watches it.
DAEMON = (
    Grant(
        ("ecs:RunTask",),
        ("run_task_definition",),
        "a run as a task of the run task definition",
    ),
    Grant(
        ("ecs:DescribeTasks", "ecs:StopTask", "ecs:TagResource"),
        ("run_tasks", "own_tasks"),
        "watching, tagging and stopping runs; reading its own task",
    ),
    Grant(("ecs:DescribeTaskDefinition",), ("*",), "no resource-level permission"),
    Grant(("ec2:DescribeNetworkInterfaces",), ("*",), "no resource-level permission"),
    Grant(("iam:PassRole",), ("run_task_role", "execution_role"), "a run's roles, to ECS tasks"),
    Grant(OBJECTS_READ, ("compute_log_objects",), "run monitoring reads compute logs"),
)

# The comparables page reads the table, the index and the pictures, and embeds a picture asked.
PAGE = (
    Grant(OBJECTS_READ, ("data_objects",), "pictures, the index, the warehouse files"),
    Grant(BUCKET_LIST, ("data_bucket",), "index segments"),
    Grant(
        ("dynamodb:BatchGetItem", "dynamodb:GetItem"),
        ("image_vectors_table",),
        "a picture's kept vector",
    ),  # fmt: skip
    Grant(("bedrock:InvokeModel",), ("embedding_models",), "embedding a picture asked about"),
    Grant(("glue:GetTable",), ("glue_catalog", "glue_database", "glue_tables"), "the tables"),
    Grant(S3TABLES_READ, ("table_bucket", "table_bucket_tables"), "the Iceberg tables"),
)

# Bedrock's service role for batch inference: its input and output under bedrock-batch/.
BATCH = (
    Grant(("s3:GetObject", "s3:PutObject"), ("batch_objects",), "the job's records and answers"),
    Grant(BUCKET_LIST, ("data_bucket",), "listing the job's input"),
)

ROLES = {
    "RunTaskRole": PIPELINE,
    "CodeLocationRole": CODE_LOCATION,
    "WebserverRole": WEBSERVER,
    "DaemonRole": DAEMON,
    "PageRole": PAGE,
    "BedrockBatchRole": BATCH,
}
