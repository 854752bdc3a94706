"""The production deployment as one CloudFormation stack, written with AWS CDK.

ECS on Fargate, ARM64 (Graviton): the Dagster webserver, the daemon and the code location (gRPC,
reached by Service Connect as `smartgo-code-location`) as services, and the run task definition
the EcsRunLauncher launches each run with (2 vCPU, 4 GiB); the comparables page as a service;
RDS Postgres for Dagster's instance (credentials in Secrets Manager); the data and compute-log
buckets; the Iceberg tables' home (an S3 Tables table bucket and namespace, or a Glue database);
the DynamoDB tables the pipeline owns (SalesData is an input, named); the alert topic; the
secrets whose values an operator puts after deploying; the Bedrock batch service role; log
groups; an HTTPS load balancer that lets in only an allowed network (and, with an OIDC provider
configured, only who signs in) in front of the webserver and the page.

Each role's policy comes from `access.py`; nothing here grants an action of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3tables as s3tables
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from constructs import Construct

from deploy.smartgo_deploy import access

NAMESPACE = "pricing_intelligence"  # smartgo_analytics.core.sales_table's tables live here
CODE_LOCATION_HOST = "smartgo-code-location"  # deploy/workspace.yaml
GRPC_PORT, WEB_PORT, PAGE_PORT = 4000, 3000, 8765


@dataclass(frozen=True)
class Settings:
    """What a deployment is given (`cdk.json` context or `make deploy` variables)."""

    stage: str = "prod"
    region: str = "eu-west-1"
    account: str | None = None
    vpc_id: str = "vpc-00000000"
    private_subnets: tuple[str, ...] = ("subnet-0000000a", "subnet-0000000b")
    public_subnets: tuple[str, ...] = ("subnet-0000000c", "subnet-0000000d")
    image: str = "public.ecr.aws/smartgo/smartgo-analytics:latest"
    certificate_arn: str = "arn:aws:acm:eu-west-1:123456789012:certificate/replace-me"
    allowed_cidr: str = "10.0.0.0/8"
    dagster_host: str = "dagster.example.com"
    page_host: str = "comparables.example.com"
    catalog: str = "s3tables"  # or glue
    profile: str = "standard"  # or small: webserver, daemon, code location in one task
    sales_data_table: str = "SalesData"
    embedding_model: str = "amazon.titan-embed-image-v1"
    database_class: str = "t4g.micro"
    oidc: dict = field(default_factory=dict)  # issuer, authorization/token/user_info endpoints,
    #                                           client_id, client_secret_name (Secrets Manager)

    def __post_init__(self):
        if self.catalog not in ("s3tables", "glue"):
            raise ValueError(f"catalog={self.catalog!r}: s3tables or glue")
        if self.profile not in ("standard", "small"):
            raise ValueError(f"profile={self.profile!r}: standard or small")
        if not self.private_subnets or not self.public_subnets:
            raise ValueError("private_subnets and public_subnets name at least one subnet each")


class SmartGoStack(cdk.Stack):
    def __init__(self, scope: Construct, settings: Settings):
        super().__init__(
            scope,
            f"smartgo-analytics-{settings.stage}",
            env=cdk.Environment(account=settings.account, region=settings.region),
            synthesizer=cdk.DefaultStackSynthesizer(generate_bootstrap_version_rule=False),
            description=f"smartgo_analytics, stage {settings.stage} (deploy/smartgo_deploy)",
        )
        self.settings = settings
        name = f"smartgo-{settings.stage}"
        self.vpc = ec2.Vpc.from_vpc_attributes(
            self,
            "Vpc",
            vpc_id=settings.vpc_id,
            availability_zones=[f"{settings.region}{z}" for z in "abc"][
                : len(settings.private_subnets)
            ],
            private_subnet_ids=list(settings.private_subnets),
            public_subnet_ids=list(settings.public_subnets)[: len(settings.private_subnets)],
        )
        self.private = ec2.SubnetSelection(
            subnets=[
                ec2.Subnet.from_subnet_id(self, f"Private{n}", s)
                for n, s in enumerate(settings.private_subnets)
            ]
        )
        self.public = ec2.SubnetSelection(
            subnets=[
                ec2.Subnet.from_subnet_id(self, f"Public{n}", s)
                for n, s in enumerate(settings.public_subnets)
            ]
        )
        self._storage(name)
        self._secrets(name)
        self._roles()
        self._instance_database()
        self._compute(name)
        self._load_balancer()
        self._outputs()

    # --- storage -------------------------------------------------------------------------------

    def _bucket(self, logical: str, rules: list[s3.LifecycleRule]) -> s3.Bucket:
        bucket = s3.Bucket(
            self,
            logical,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=cdk.RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(abort_incomplete_multipart_upload_after=cdk.Duration.days(1)),
                *rules,
            ],
        )
        return bucket

    def _storage(self, name: str) -> None:
        days = cdk.Duration.days
        # What is only a hand-off expires: a day's staged sales (re-made by a run of the day),
        # batch inference files (deleted by the job that made them; these catch a killed run).
        self.data = self._bucket(
            "DataBucket",
            [
                s3.LifecycleRule(id="staging", prefix="staging/", expiration=days(14)),
                s3.LifecycleRule(id="batch", prefix="bedrock-batch/", expiration=days(14)),
            ],
        )
        self.compute_logs = self._bucket(
            "ComputeLogBucket", [s3.LifecycleRule(id="logs", expiration=days(30))]
        )
        table = dict(
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        string = dynamodb.AttributeType.STRING
        self.image_vectors = dynamodb.Table(
            self,
            "ImageVectors",
            table_name=f"smartgo-image-vectors-{self.settings.stage}",
            partition_key=dynamodb.Attribute(name="image", type=string),
            **table,
        )
        self.export_progress = dynamodb.Table(
            self,
            "ExportProgress",
            table_name=f"smartgo-export-progress-{self.settings.stage}",
            partition_key=dynamodb.Attribute(name="PK", type=string),
            sort_key=dynamodb.Attribute(name="SK", type=string),
            time_to_live_attribute="ttl",
            **table,
        )
        self.topic = sns.Topic(
            self,
            "Alerts",
            topic_name=f"{name}-alerts",
            enforce_ssl=True,
            master_key=kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"),
        )
        if self.settings.catalog == "s3tables":
            self.table_bucket = s3tables.CfnTableBucket(
                self, "TableBucket", table_bucket_name=f"{name}-tables"
            )
            s3tables.CfnNamespace(
                self,
                "TableNamespace",
                table_bucket_arn=self.table_bucket.attr_table_bucket_arn,
                namespace=NAMESPACE,
            )
        else:
            glue.CfnDatabase(
                self,
                "GlueDatabase",
                catalog_id=self.account,
                database_input=glue.CfnDatabase.DatabaseInputProperty(name=NAMESPACE),
            )
        self.log_groups = {
            part: logs.LogGroup(
                self,
                f"Logs{part.title()}",
                log_group_name=f"/smartgo/{self.settings.stage}/{part}",
                retention=logs.RetentionDays.ONE_MONTH,
                removal_policy=cdk.RemovalPolicy.DESTROY,
            )
            for part in ("webserver", "daemon", "code", "runs", "page")
        }

    def _secrets(self, name: str) -> None:
        """Secrets whose values are put after deploying (never in the template)."""
        made = {}
        for logical, part, what in (
            ("DatabaseSecret", "database", "the SmartGo database's JSON (host, port, database, "
             "username, password, ...)"),
            ("ApiTokenSecret", "api-token", "the SmartGo API's token"),
            ("PageTokenSecret", "page-token", "the comparables page's token"),
        ):  # fmt: skip
            made[part] = secretsmanager.Secret(
                self,
                logical,
                secret_name=f"smartgo/{self.settings.stage}/{part}",
                description=f"{what}: set with `aws secretsmanager put-secret-value`",
            )
        self.database_secret, self.api_token_secret = made["database"], made["api-token"]
        self.page_token_secret = made["page-token"]

    # --- roles ---------------------------------------------------------------------------------

    def _arns(self) -> dict[str, list[str]]:
        """The resources a grant of `access.py` may name, by key."""
        region, account, stage = self.region, self.account, self.settings.stage
        partition = self.partition

        def arn(service: str, resource: str) -> str:
            return f"arn:{partition}:{service}:{region}:{account}:{resource}"

        model = self.settings.embedding_model
        secret = lambda s: f"{s.secret_arn}"  # noqa: E731
        arns = {
            "data_bucket": [self.data.bucket_arn],
            "data_objects": [self.data.arn_for_objects("*")],
            "batch_objects": [self.data.arn_for_objects("bedrock-batch/*")],
            "compute_log_bucket": [self.compute_logs.bucket_arn],
            "compute_log_objects": [self.compute_logs.arn_for_objects("*")],
            "image_vectors_table": [self.image_vectors.table_arn],
            "export_progress_table": [self.export_progress.table_arn],
            "sales_data_table": [arn("dynamodb", f"table/{self.settings.sales_data_table}")],
            "embedding_models": [f"arn:{partition}:bedrock:{region}::foundation-model/{model}"],
            "batch_jobs": [arn("bedrock", "model-invocation-job/*")],
            "database_parameter": [
                arn("ssm", f"parameter/aws/reference/secretsmanager/smartgo/{stage}/database")
            ],
            "api_token_parameter": [
                arn("ssm", f"parameter/aws/reference/secretsmanager/smartgo/{stage}/api-token")
            ],
            "database_secret": [secret(self.database_secret)],
            "api_token_secret": [secret(self.api_token_secret)],
            "alert_topic": [self.topic.topic_arn],
            "quicksight_datasets": [
                arn("quicksight", "dataset/*"),
                arn("quicksight", "dataset/*/ingestion/*"),
            ],
            "glue_catalog": [arn("glue", "catalog")],
            "glue_database": [arn("glue", f"database/{NAMESPACE}")],
            "glue_tables": [arn("glue", f"table/{NAMESPACE}/*")],
            "table_bucket": [arn("s3tables", f"bucket/smartgo-{stage}-tables")],
            "table_bucket_tables": [arn("s3tables", f"bucket/smartgo-{stage}-tables/table/*")],
            "run_tasks": [arn("ecs", f"task/smartgo-{stage}/*")],
            "own_tasks": [arn("ecs", f"task/smartgo-{stage}/*")],
            "run_task_definition": [arn("ecs", f"task-definition/smartgo-{stage}-run:*")],
            "*": ["*"],
        }
        if self.settings.catalog == "s3tables":
            for key in ("glue_catalog", "glue_database", "glue_tables"):
                arns[key] = []
        else:
            arns["table_bucket"], arns["table_bucket_tables"] = [], []
        return arns

    def _role(self, logical: str, principal: iam.IPrincipal, grants) -> iam.Role:
        role = iam.Role(self, logical, assumed_by=principal)
        role.node.default_child.override_logical_id(logical)  # type: ignore[union-attr]
        self.roles[logical] = role
        self._grant(role, grants)
        return role

    def _grant(self, role: iam.Role, grants) -> None:
        arns = self._arns() | getattr(self, "late_arns", {})
        for grant in grants:
            resources = [r for key in grant.on for r in arns.get(key, [])]
            if not resources:
                continue  # e.g. Glue grants in an S3 Tables deployment
            if resources == ["*"]:
                assert all(a in access.ANY_RESOURCE for a in grant.actions), grant
            role.add_to_policy(
                iam.PolicyStatement(actions=list(grant.actions), resources=resources)
            )

    def _roles(self) -> None:
        self.roles: dict[str, iam.Role] = {}
        tasks = iam.ServicePrincipal("ecs-tasks.amazonaws.com")
        bedrock = iam.ServicePrincipal(
            "bedrock.amazonaws.com",
            conditions={"StringEquals": {"aws:SourceAccount": self.account}},
        )
        self.batch_role = self._role("BedrockBatchRole", bedrock, access.BATCH)
        self.execution_role = iam.Role(self, "ExecutionRole", assumed_by=tasks)
        self.execution_role.node.default_child.override_logical_id("ExecutionRole")  # type: ignore[union-attr]
        self.late_arns = {
            "batch_role": [self.batch_role.role_arn],
            "execution_role": [self.execution_role.role_arn],
        }
        self.run_role = self._role("RunTaskRole", tasks, access.PIPELINE)
        self.late_arns["run_task_role"] = [self.run_role.role_arn]
        self._grant(self.run_role, (access.Grant(("ecs:DescribeTaskDefinition",), ("*",), ""),))
        self._role("CodeLocationRole", tasks, access.CODE_LOCATION)
        web = self._role("WebserverRole", tasks, access.WEBSERVER)
        self._grant(web, (access.Grant(("ecs:DescribeTaskDefinition",), ("*",), ""),))
        self._role("DaemonRole", tasks, access.DAEMON)
        self._role("PageRole", tasks, access.PAGE)

    # --- Dagster's instance --------------------------------------------------------------------

    def _instance_database(self) -> None:
        self.tasks_sg = ec2.SecurityGroup(
            self, "TasksSecurityGroup", vpc=self.vpc, description="smartgo ECS tasks"
        )
        self.tasks_sg.add_ingress_rule(self.tasks_sg, ec2.Port.tcp(GRPC_PORT), "code location")
        db_sg = ec2.SecurityGroup(
            self, "DatabaseSecurityGroup", vpc=self.vpc, description="the Dagster instance database"
        )
        db_sg.add_ingress_rule(self.tasks_sg, ec2.Port.tcp(5432), "the ECS tasks")
        self.db = rds.DatabaseInstance(
            self,
            "InstanceDatabase",
            instance_identifier=f"smartgo-{self.settings.stage}-dagster",
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_17_6),
            instance_type=ec2.InstanceType(self.settings.database_class),
            vpc=self.vpc,
            vpc_subnets=self.private,
            security_groups=[db_sg],
            credentials=rds.Credentials.from_generated_secret(
                "dagster", secret_name=f"smartgo/{self.settings.stage}/dagster-instance"
            ),
            database_name="dagster",
            allocated_storage=20,
            max_allocated_storage=100,
            storage_encrypted=True,
            multi_az=False,
            backup_retention=cdk.Duration.days(7),
            deletion_protection=True,
            removal_policy=cdk.RemovalPolicy.SNAPSHOT,
        )

    # --- ECS -----------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        stage, settings = self.settings.stage, self.settings
        env = {
            "SMARTGO_DEPLOYMENT": "prod",
            "STAGE": stage,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "S3_BUCKET": self.data.bucket_name,
            "DYNAMODB_TABLE": settings.sales_data_table,
            "EXPORT_PROGRESS_TABLE_NAME": self.export_progress.table_name,
            "IMAGE_VECTORS_TABLE": self.image_vectors.table_name,
            "ALERT_SNS_TOPIC_ARN": self.topic.topic_arn,
            "EMBEDDING_MODEL": settings.embedding_model,
            "SMARTGO_DB_SSM_PARAMETER": f"/aws/reference/secretsmanager/smartgo/{stage}/database",
            "BEDROCK_BATCH_ROLE_ARN": self.batch_role.role_arn,
            "DAGSTER_COMPUTE_LOG_BUCKET": self.compute_logs.bucket_name,
            "DAGSTER_PG_HOST": self.db.db_instance_endpoint_address,
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_CODE_LOCATION_HOST": CODE_LOCATION_HOST
            if settings.profile == "standard"
            else "localhost",
            "DAGSTER_RUN_TASK_DEFINITION": f"smartgo-{stage}-run",
            "DAGSTER_WEBSERVER_URL": f"https://{settings.dagster_host}",
        }
        if settings.catalog == "s3tables":
            env |= {
                "ICEBERG_CATALOG_TYPE": "rest",
                "ICEBERG_CATALOG_URI": f"https://s3tables.{self.region}.amazonaws.com/iceberg",
                "ICEBERG_WAREHOUSE": self.table_bucket.attr_table_bucket_arn,
                "ICEBERG_CATALOG_PROPERTIES": cdk.Fn.sub(
                    '{"rest.sigv4-enabled": "true", "rest.signing-name": "s3tables", '
                    '"rest.signing-region": "${AWS::Region}"}'
                ),
            }
        else:
            env |= {
                "ICEBERG_CATALOG_TYPE": "glue",
                "ICEBERG_WAREHOUSE": f"s3://{self.data.bucket_name}/warehouse",
            }
        return env

    def _task(self, logical: str, role: str, cpu: int, memory: int, family: str):
        task = ecs.FargateTaskDefinition(
            self,
            logical,
            family=family,
            cpu=cpu,
            memory_limit_mib=memory,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.ARM64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
            task_role=self.roles[role],
            execution_role=self.execution_role,
        )
        return task

    def _container(self, task, name: str, command: list[str], logs_part: str, ports=(), **extra):
        secrets = {
            "DAGSTER_PG_USERNAME": ecs.Secret.from_secrets_manager(self.db.secret, "username"),
            "DAGSTER_PG_PASSWORD": ecs.Secret.from_secrets_manager(self.db.secret, "password"),
            **extra.pop("secrets", {}),
        }
        return task.add_container(
            name,
            image=self._image(),
            command=command,
            environment=self._environment(),
            secrets=secrets,
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix=name, log_group=self.log_groups[logs_part]
            ),
            port_mappings=[ecs.PortMapping(container_port=p, name=n) for n, p in ports],
            **extra,
        )

    def _image(self) -> ecs.ContainerImage:
        """The image: from an ECR repository of the account (the execution role may pull it and
        nothing else), or from any registry that needs no credentials."""
        ecr_uri = re.fullmatch(
            r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([^:@]+)(?::([\w.-]+))?",
            self.settings.image,
        )
        if ecr_uri is None:
            return ecs.ContainerImage.from_registry(self.settings.image)
        account, region, repository, tag = ecr_uri.groups()
        if not hasattr(self, "_repository"):
            self._repository = ecr.Repository.from_repository_attributes(
                self,
                "ImageRepository",
                repository_arn=f"arn:{self.partition}:ecr:{region}:{account}:repository/{repository}",
                repository_name=repository,
            )
        return ecs.ContainerImage.from_ecr_repository(self._repository, tag or "latest")

    def _compute(self, name: str) -> None:
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            cluster_name=name,
            vpc=self.vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        self.cluster.add_default_cloud_map_namespace(
            name=f"{name}.internal", use_for_service_connect=True
        )
        workspace = "/opt/dagster/dagster_home/workspace.yaml"
        webserver_cmd = ["dagster-webserver", "-h", "0.0.0.0", "-p", str(WEB_PORT), "-w", workspace]
        daemon_cmd = ["dagster-daemon", "run", "-w", workspace]
        code_cmd = ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", str(GRPC_PORT),
                    "-m", "smartgo_analytics.definitions"]  # fmt: skip
        page_cmd = ["smartgo-analytics", "web", "--host", "0.0.0.0", "--port", str(PAGE_PORT),
                    "--allowed-host", self.settings.page_host]  # fmt: skip

        # The run task definition the EcsRunLauncher launches (DAGSTER_RUN_TASK_DEFINITION).
        run = self._task("RunTask", "RunTaskRole", 2048, 4096, f"{name}-run")
        self._container(run, "run", [], "runs")

        def service(logical, task, ports=(), connect=None):
            svc = ecs.FargateService(
                self,
                logical,
                cluster=self.cluster,
                task_definition=task,
                security_groups=[self.tasks_sg],
                vpc_subnets=self.private,
                desired_count=1,
                min_healthy_percent=0,
                max_healthy_percent=100,
                circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
                service_connect_configuration=connect or ecs.ServiceConnectProps(),
            )
            return svc

        if self.settings.profile == "standard":
            code = self._task("CodeLocationTask", "CodeLocationRole", 512, 1024, f"{name}-code")
            self._container(code, "code", code_cmd, "code", [("grpc", GRPC_PORT)])
            connect = ecs.ServiceConnectProps(
                services=[ecs.ServiceConnectService(
                    port_mapping_name="grpc", dns_name=CODE_LOCATION_HOST, port=GRPC_PORT)]
            )  # fmt: skip
            service("CodeLocationService", code, connect=connect)
            web = self._task("WebserverTask", "WebserverRole", 512, 1024, f"{name}-webserver")
            self._container(web, "webserver", webserver_cmd, "webserver", [("web", WEB_PORT)])
            self.web_service = service("WebserverService", web)
            daemon = self._task("DaemonTask", "DaemonRole", 256, 512, f"{name}-daemon")
            self._container(daemon, "daemon", daemon_cmd, "daemon")
            service("DaemonService", daemon)
        else:
            # One task for the three: the roles' grants joined in one role (DaemonRole's name).
            both = self._task("DagsterTask", "DaemonRole", 1024, 2048, f"{name}-dagster")
            for grants in (access.WEBSERVER, access.CODE_LOCATION):
                self._grant(self.roles["DaemonRole"], grants)
            self._container(both, "code", code_cmd, "code", [("grpc", GRPC_PORT)])
            self._container(both, "webserver", webserver_cmd, "webserver", [("web", WEB_PORT)])
            self._container(both, "daemon", daemon_cmd, "daemon")
            self.web_service = service("DagsterService", both)
        page = self._task("PageTask", "PageRole", 512, 1024, f"{name}-page")
        self._container(
            page,
            "page",
            page_cmd,
            "page",
            [("page", PAGE_PORT)],
            secrets={"SMARTGO_WEB_TOKEN": ecs.Secret.from_secrets_manager(self.page_token_secret)},
        )
        self.page_service = service("PageService", page)

    # --- the way in ----------------------------------------------------------------------------

    def _load_balancer(self) -> None:
        settings = self.settings
        sg = ec2.SecurityGroup(
            self, "LoadBalancerSecurityGroup", vpc=self.vpc, allow_all_outbound=False,
            description="HTTPS from the allowed network only",
        )  # fmt: skip
        sg.add_ingress_rule(ec2.Peer.ipv4(settings.allowed_cidr), ec2.Port.tcp(443), "allowed")
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=self.vpc,
            internet_facing=True,
            vpc_subnets=self.public,
            security_group=sg,
            drop_invalid_header_fields=True,
        )
        listener = self.alb.add_listener(
            "Https",
            port=443,
            open=False,
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            certificates=[elbv2.ListenerCertificate.from_arn(settings.certificate_arn)],
            default_action=elbv2.ListenerAction.fixed_response(404, message_body="not here"),
        )
        for priority, (host, svc, port, path) in enumerate(
            (
                (settings.dagster_host, self.web_service, WEB_PORT, "/server_info"),
                (settings.page_host, self.page_service, PAGE_PORT, "/"),
            ),
            start=10,
        ):
            target = elbv2.ApplicationTargetGroup(
                self,
                f"Target{priority}",
                vpc=self.vpc,
                port=port,
                protocol=elbv2.ApplicationProtocol.HTTP,
                target_type=elbv2.TargetType.IP,
                # The page answers 401 to a request without its token (and 400 to a host it
                # was not started for): an answer at all is its health.
                health_check=elbv2.HealthCheck(
                    path=path, healthy_http_codes="200" if port == WEB_PORT else "200-499"
                ),
            )
            svc.attach_to_application_target_group(target)
            self.tasks_sg.add_ingress_rule(sg, ec2.Port.tcp(port), "the load balancer")
            sg.add_egress_rule(self.tasks_sg, ec2.Port.tcp(port), "the services")
            action = elbv2.ListenerAction.forward([target])
            if settings.oidc:
                oidc = settings.oidc
                action = elbv2.ListenerAction.authenticate_oidc(
                    issuer=oidc["issuer"],
                    authorization_endpoint=oidc["authorization_endpoint"],
                    token_endpoint=oidc["token_endpoint"],
                    user_info_endpoint=oidc["user_info_endpoint"],
                    client_id=oidc["client_id"],
                    client_secret=cdk.SecretValue.secrets_manager(oidc["client_secret_name"]),
                    next=action,
                )
            listener.add_action(
                f"Host{priority}",
                priority=priority,
                conditions=[elbv2.ListenerCondition.host_headers([host])],
                action=action,
            )
        if settings.oidc:  # the IdP's endpoints are reached from the load balancer
            sg.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "the OIDC provider")

    def _outputs(self) -> None:
        outputs = {
            "DataBucketName": self.data.bucket_name,
            "ComputeLogBucketName": self.compute_logs.bucket_name,
            "ImageVectorsTableName": self.image_vectors.table_name,
            "ExportProgressTableName": self.export_progress.table_name,
            "AlertTopicArn": self.topic.topic_arn,
            "BedrockBatchRoleArn": self.batch_role.role_arn,
            "LoadBalancerDnsName": self.alb.load_balancer_dns_name,
            "DatabaseSecretName": self.database_secret.secret_name,
        }
        for key, value in outputs.items():
            cdk.CfnOutput(self, key, value=value)
