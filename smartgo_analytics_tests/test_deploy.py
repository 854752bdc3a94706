"""The production stack (deploy/smartgo_deploy) as CloudFormation sees it: every role held to its
grants (no wildcard action, "*" only where AWS has no resource-level permission), Graviton tasks
of the sizes the runs need, nothing of the webserver reachable but through the load balancer's
HTTPS from the allowed network (and OIDC when configured), secrets without values; and the stack
deployed to moto's CloudFormation on 127.0.0.1, the prod day run against what it made.

Left out of the moto deployment, as moto's CloudFormation does not make them (a reference to one
becomes a placeholder): AWS::SecretsManager::Secret and ::SecretTargetAttachment,
AWS::Glue::Database (made by hand, as the stack would), AWS::ServiceDiscovery::PrivateDnsNamespace,
AWS::S3::BucketPolicy, AWS::SNS::TopicPolicy and AWS::EC2::SecurityGroupEgress (and
AWS::S3Tables::*, which the Glue deployment tested there does not have).
"""

import fnmatch
import json

import boto3
import pytest
import yaml

from deploy.smartgo_deploy import access
from deploy.smartgo_deploy.stack import Settings
from deploy.smartgo_deploy.synth import deploy, synth
from smartgo_analytics_tests.aws_calls import allowed_actions, role_statements
from smartgo_analytics_tests.test_prod_deployment import (  # noqa: F401  (the fixture, used below)
    fresh_glue_database,
    prod_environment,
)
from smartgo_analytics_tests.test_prod_deployment import (
    test_one_day_of_every_asset_runs_on_the_prod_resources_and_again_changes_nothing as prod_day,
)

# What moto's CloudFormation makes of this stack's resource types.
MOTO_TYPES = {
    "AWS::S3::Bucket",
    "AWS::DynamoDB::Table",
    "AWS::SNS::Topic",
    "AWS::IAM::Role",
    "AWS::IAM::Policy",
    "AWS::Logs::LogGroup",
    "AWS::EC2::SecurityGroup",
    "AWS::EC2::SecurityGroupIngress",
    "AWS::ECS::Cluster",
    "AWS::ECS::TaskDefinition",
    "AWS::ECS::Service",
    "AWS::ElasticLoadBalancingV2::LoadBalancer",
    "AWS::ElasticLoadBalancingV2::TargetGroup",
    "AWS::ElasticLoadBalancingV2::Listener",
    "AWS::ElasticLoadBalancingV2::ListenerRule",
    "AWS::RDS::DBSubnetGroup",
    "AWS::RDS::DBInstance",
}


def of_type(template: dict, kind: str) -> dict:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


@pytest.fixture(scope="module")
def s3tables_template(tmp_path_factory):
    return synth(Settings(), tmp_path_factory.mktemp("s3tables"))


@pytest.fixture(scope="module")
def small_template(tmp_path_factory):
    oidc = {
        "issuer": "https://login.example.com",
        "authorization_endpoint": "https://login.example.com/authorize",
        "token_endpoint": "https://login.example.com/token",
        "user_info_endpoint": "https://login.example.com/userinfo",
        "client_id": "smartgo",
        "client_secret_name": "smartgo/prod/oidc-client-secret",
    }
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/smartgo-analytics:2026.12.8"
    return synth(
        Settings(profile="small", oidc=oidc, image=image), tmp_path_factory.mktemp("small")
    )


def test_each_role_allows_exactly_its_grants_and_no_wildcard_action(
    production_template, s3tables_template, small_template
):
    for template in (production_template, s3tables_template, small_template):
        for role in [*access.ROLES, "ExecutionRole"]:
            for statement in role_statements(template, role):
                actions = statement["Action"]
                actions = [actions] if isinstance(actions, str) else actions
                assert all(a != "*" and not a.endswith(":*") for a in actions), (role, actions)
                if statement["Resource"] == "*":
                    assert set(actions) <= set(access.ANY_RESOURCE), (role, actions)
        policies = of_type(template, "AWS::IAM::Policy").values()
        for policy in policies:
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions = statement["Action"]
                actions = [actions] if isinstance(actions, str) else actions
                assert not [a for a in actions if a == "*" or a.endswith(":*")], actions
    # Nothing more than access.py grants (CDK adds nothing of its own to these roles).
    for role, grants in access.ROLES.items():
        granted = {a for g in grants for a in g.actions}
        extra = (
            {"ecs:DescribeTaskDefinition"} if role in ("RunTaskRole", "WebserverRole") else set()
        )
        catalog = {a for a in granted if a.startswith("s3tables:")}
        assert set(allowed_actions(production_template, role)) == (granted | extra) - catalog
    # The S3 Tables deployment grants its tables' actions on its table bucket, not Glue's.
    run = role_statements(s3tables_template, "RunTaskRole")
    tables = [s for s in run if any(a.startswith("s3tables:") for a in s["Action"])]
    assert tables and all("bucket/smartgo-prod-tables" in json.dumps(s["Resource"]) for s in tables)
    assert not [s for s in run if any(a.startswith("glue:") for a in s["Action"])]


def test_the_batch_role_is_bedrocks_and_reads_and_writes_only_the_batch_prefix(production_template):
    role = production_template["Resources"]["BedrockBatchRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "bedrock.amazonaws.com"}
    assert "aws:SourceAccount" in json.dumps(trust["Condition"])
    objects = [
        s
        for s in role_statements(production_template, "BedrockBatchRole")
        if "s3:PutObject" in s["Action"]
    ]
    assert objects and all("/bedrock-batch/*" in json.dumps(s["Resource"]) for s in objects)


def test_every_task_runs_on_graviton_and_a_run_has_two_vcpu_and_four_gib(production_template):
    tasks = of_type(production_template, "AWS::ECS::TaskDefinition")
    assert len(tasks) == 5  # code location, webserver, daemon, page, run
    for task in tasks.values():
        platform = task["Properties"]["RuntimePlatform"]
        assert platform == {"CpuArchitecture": "ARM64", "OperatingSystemFamily": "LINUX"}
        assert task["Properties"]["RequiresCompatibilities"] == ["FARGATE"]
    (run,) = [t for t in tasks.values() if t["Properties"]["Family"] == "smartgo-prod-run"]
    assert (run["Properties"]["Cpu"], run["Properties"]["Memory"]) == ("2048", "4096")
    assert run["Properties"]["TaskRoleArn"] == {"Fn::GetAtt": ["RunTaskRole", "Arn"]}
    # The code location is reached by the name the workspace uses.
    services = of_type(production_template, "AWS::ECS::Service").values()
    named = [
        s["Properties"]["ServiceConnectConfiguration"]["Services"]
        for s in services
        if s["Properties"]["ServiceConnectConfiguration"].get("Services")
    ]
    assert named == [[{"ClientAliases": [{"DnsName": "smartgo-code-location", "Port": 4000}],
                       "PortName": "grpc"}]]  # fmt: skip
    assert all(
        s["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"]
        == "DISABLED"
        for s in services
    )


def test_only_https_from_the_allowed_network_reaches_the_webserver_and_the_page(
    production_template, small_template
):
    for template in (production_template, small_template):
        (listener,) = of_type(template, "AWS::ElasticLoadBalancingV2::Listener").values()
        props = listener["Properties"]
        assert (props["Protocol"], props["Port"]) == ("HTTPS", 443) and props["Certificates"]
        assert props["DefaultActions"][0]["Type"] == "fixed-response"
        ingress = [
            rule
            for group in of_type(template, "AWS::EC2::SecurityGroup").values()
            for rule in group["Properties"].get("SecurityGroupIngress", [])
        ]
        assert [(r["CidrIp"], r["FromPort"], r["ToPort"]) for r in ingress] == [
            ("10.0.0.0/8", 443, 443)
        ]
        # The tasks' ports are open to the load balancer's group and the tasks' own, nothing else.
        for rule in of_type(template, "AWS::EC2::SecurityGroupIngress").values():
            assert "SourceSecurityGroupId" in rule["Properties"]
        rules = of_type(template, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
        hosts = {
            tuple(r["Properties"]["Conditions"][0]["HostHeaderConfig"]["Values"]) for r in rules
        }
        assert hosts == {("dagster.example.com",), ("comparables.example.com",)}
    # With an OIDC provider, nobody is forwarded who has not signed in.
    for rule in of_type(small_template, "AWS::ElasticLoadBalancingV2::ListenerRule").values():
        first, then = rule["Properties"]["Actions"]
        assert first["Type"] == "authenticate-oidc" and then["Type"] == "forward"
        assert "resolve:secretsmanager:smartgo/prod/oidc-client-secret" in json.dumps(first)
    # An image of the account's ECR: the execution role pulls that repository, nothing else.
    pulls = [
        s
        for s in role_statements(small_template, "ExecutionRole")
        if "ecr:BatchGetImage" in s["Action"]
    ]
    (pull,) = pulls
    assert json.dumps(pull["Resource"]).endswith(
        ':ecr:eu-west-1:123456789012:repository/smartgo-analytics"]]}'
    )
    # The small profile: webserver, daemon and code location in one task, reached on localhost.
    services = of_type(small_template, "AWS::ECS::Service")
    assert len(services) == 2
    environment = json.dumps(of_type(small_template, "AWS::ECS::TaskDefinition"))
    assert '"DAGSTER_CODE_LOCATION_HOST", "Value": "localhost"' in environment


def test_storage_is_private_encrypted_and_hand_offs_expire_and_secrets_have_no_value(
    production_template,
):
    buckets = of_type(production_template, "AWS::S3::Bucket").values()
    assert len(buckets) == 2
    for bucket in buckets:
        props = bucket["Properties"]
        assert all(props["PublicAccessBlockConfiguration"].values())
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert props["LifecycleConfiguration"]["Rules"]
    prefixes = {
        rule.get("Prefix")
        for bucket in buckets
        for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    }
    assert {"staging/", "bedrock-batch/"} <= prefixes
    for secret in of_type(production_template, "AWS::SecretsManager::Secret").values():
        assert "SecretString" not in secret["Properties"]
    tables = of_type(production_template, "AWS::DynamoDB::Table").values()
    assert sorted(t["Properties"]["TableName"] for t in tables) == [
        "smartgo-export-progress-prod",
        "smartgo-image-vectors-prod",
    ]  # SalesData is an input: named, never made
    (database,) = of_type(production_template, "AWS::RDS::DBInstance").values()
    assert database["Properties"]["DBInstanceClass"] == "db.t4g.micro"
    assert database["Properties"]["StorageEncrypted"] is True
    assert not database["Properties"].get("PubliclyAccessible")
    for group in of_type(production_template, "AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"] == 30


def test_the_instance_config_names_the_stacks_run_task_definition_and_workspace():
    from dagster._config import process_config
    from dagster_aws.ecs import EcsRunLauncher

    with open("deploy/dagster.yaml") as config:
        launcher = yaml.safe_load(config)["run_launcher"]["config"]
    assert process_config(EcsRunLauncher.config_type(), launcher).success
    assert launcher["task_definition"] == {"env": "DAGSTER_RUN_TASK_DEFINITION"}
    with open("deploy/workspace.yaml") as config:
        (location,) = yaml.safe_load(config)["load_from"]
    assert location["grpc_server"]["host"] == {"env": "DAGSTER_CODE_LOCATION_HOST"}


def moto_template(template: dict) -> tuple[dict, set[str]]:
    """The template without what moto's CloudFormation does not make; a reference to one of those
    becomes a placeholder of its kind (an ARN, a name). The types left out."""
    resources = template["Resources"]
    dropped = {k for k, r in resources.items() if r["Type"] not in MOTO_TYPES}

    def placeholder(value):
        if isinstance(value, dict):
            if value.get("Ref") in dropped:
                return f"arn:aws:placeholder:us-east-1:123456789012:ref:{value['Ref']}-000000"
            getatt = value.get("Fn::GetAtt")
            if isinstance(getatt, list) and getatt[0] in dropped:
                return f"arn:aws:placeholder:us-east-1:123456789012:attr:{getatt[0]}-{getatt[1]}"
            return {k: placeholder(v) for k, v in value.items()}
        if isinstance(value, list):
            return [placeholder(v) for v in value]
        return value

    kept = {k: placeholder(r) for k, r in resources.items() if k not in dropped}
    for resource in kept.values():
        resource["DependsOn"] = [d for d in resource.get("DependsOn", []) if d not in dropped]
    outputs = placeholder(template.get("Outputs", {}))
    return {**template, "Resources": kept, "Outputs": outputs}, {
        resources[k]["Type"] for k in dropped
    }


@pytest.fixture
def prod_resources(stack, tmp_path, monkeypatch):
    """The bucket, tables and topic that the production stack makes, deployed to moto's
    CloudFormation on 127.0.0.1 (this module's: the prod day runs against them)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.aws_endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{n}.0/24", AvailabilityZone=f"us-east-1{z}")[
            "Subnet"
        ]["SubnetId"]
        for n, z in enumerate("abab")
    ]
    certificate = boto3.client("acm", region_name="us-east-1").request_certificate(
        DomainName="dagster.example.com", SubjectAlternativeNames=["comparables.example.com"]
    )["CertificateArn"]
    settings = Settings(
        certificate_arn=certificate,
        stage=f"e2e{tmp_path.name[-6:].replace('_', '')}".lower(),
        region="us-east-1",
        vpc_id=vpc,
        private_subnets=tuple(subnets[:2]),
        public_subnets=tuple(subnets[2:]),
        catalog="glue",
    )
    template, left_out = moto_template(synth(settings, tmp_path / "build"))
    assert left_out == {
        "AWS::SecretsManager::Secret",
        "AWS::SecretsManager::SecretTargetAttachment",
        "AWS::Glue::Database",
        "AWS::ServiceDiscovery::PrivateDnsNamespace",
        "AWS::S3::BucketPolicy",
        "AWS::SNS::TopicPolicy",
        "AWS::EC2::SecurityGroupEgress",
    }, left_out
    outputs = deploy(settings, template, wait_s=120)
    made = boto3.client("cloudformation", region_name="us-east-1").describe_stack_resources(
        StackName=f"smartgo-analytics-{settings.stage}"
    )["StackResources"]
    kinds = {r["ResourceType"] for r in made}
    assert {"AWS::S3::Bucket", "AWS::DynamoDB::Table", "AWS::SNS::Topic", "AWS::IAM::Role"} <= kinds
    # AWS::Glue::Database, made as the stack would make it.
    fresh_glue_database(boto3.client("glue", region_name="us-east-1"))
    assert "DataBucketName" in outputs, (outputs, kinds)
    names = {
        "S3_BUCKET": outputs["DataBucketName"],
        "EXPORT_PROGRESS_TABLE_NAME": outputs["ExportProgressTableName"],
        "IMAGE_VECTORS_TABLE": outputs["ImageVectorsTableName"],
        "ALERT_SNS_TOPIC_ARN": outputs["AlertTopicArn"],
    }
    assert fnmatch.fnmatch(names["S3_BUCKET"], f"smartgo-analytics-{settings.stage}-databucket*")
    return names


def test_the_prod_day_runs_on_what_the_stack_made_in_moto(
    prod_environment,  # noqa: F811
    bedrock_calls,
    cdn,
    tmp_path,
    production_template,
):
    prod_day(prod_environment, bedrock_calls, cdn, tmp_path, production_template)
