"""The stack's template, its checks, and its deployment, as one command:

    python -m deploy.smartgo_deploy synth  [settings]   # deploy/build/template.json
    python -m deploy.smartgo_deploy check  [settings]   # synth + cdk-nag (AwsSolutions) + cfn-lint
    python -m deploy.smartgo_deploy deploy [settings]   # check, then create or update the stack

Settings are flags (`--stage prod --region eu-west-1 --vpc vpc-… --private-subnets a,b …`, see
`--help`) or `SMARTGO_DEPLOY_<FLAG>` variables. `deploy` uses CloudFormation through boto3 with the
AWS chain's credentials (AWS_ENDPOINT_URL is honoured: the tests deploy to moto); a template over
CloudFormation's 51,200 bytes inline goes by `--template-bucket`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BUILD = Path(__file__).resolve().parent.parent / "build"

# Each AwsSolutions finding this stack keeps, with why; made where the stack is built.
SUPPRESSED = {
    "AwsSolutions-S1": "Server access logs: every writer and reader of these buckets is a role of "
    "this stack; CloudTrail data events are the audit trail where one is wanted.",
    "AwsSolutions-IAM5": "Object ARNs end in /* (objects under a bucket or prefix), batch jobs and "
    "tables are named by AWS at creation (model-invocation-job/*, table/*), and ECS tasks by their "
    "cluster (task/<cluster>/*); no action is a wildcard, and Resource '*' is used only for "
    "ec2:DescribeNetworkInterfaces, ecs:DescribeTaskDefinition and ecr:GetAuthorizationToken, "
    "which take no resource-level permission.",
    "AwsSolutions-SMG4": "Rotation: the instance database's secret is read at task start; rotating "
    "it needs a rotation Lambda this stack does not run (rotate by a new deployment). The other "
    "secrets are the SmartGo system's own, rotated where they are issued.",
    "AwsSolutions-RDS3": "Dagster's run and event history: a single-AZ instance by default (the "
    "smallest that serves); runs in flight retry when it fails over. Set multi_az for more.",
    "AwsSolutions-RDS11": "The default Postgres port: the database is reachable only from the "
    "tasks' security group, in private subnets.",
    "AwsSolutions-ECS2": "The environment holds names and ARNs only; secrets come from Secrets "
    "Manager (ecs secrets) and SSM references.",
    "AwsSolutions-ELB2": "Load balancer access logs need a log bucket with the ELB account's "
    "policy per region; the allowed network and OIDC are the gate. Enable with the data bucket "
    "when wanted.",
    "AwsSolutions-EC23": "The load balancer's ingress is the allowed_cidr setting (a private "
    "network by default), never 0.0.0.0/0 unless an operator sets it.",
    "AwsSolutions-RDS6": "Dagster connects with the generated password (dagster-postgres); IAM "
    "database authentication is not used.",
}


def settings_from(args: argparse.Namespace):
    from deploy.smartgo_deploy.stack import Settings

    given = {}
    for f in dataclasses.fields(Settings):
        value = getattr(args, f.name, None)
        if value is None:
            value = os.environ.get(f"SMARTGO_DEPLOY_{f.name.upper()}")
        if value is None:
            continue
        if f.name in ("private_subnets", "public_subnets"):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if f.name == "oidc":
            value = json.loads(value)
        given[f.name] = value
    return Settings(**given)


def synth(settings, build: Path = BUILD) -> dict:
    """The template (written to `build`/template.json), AwsSolutions checked: an unsuppressed
    finding is an error, raised with each finding named."""
    import aws_cdk as cdk
    from cdk_nag import AwsSolutionsChecks, NagPackSuppression, NagSuppressions

    from deploy.smartgo_deploy.stack import SmartGoStack

    shutil.rmtree(build / "cdk.out", ignore_errors=True)
    app = cdk.App(analytics_reporting=False, outdir=str(build / "cdk.out"))
    stack = SmartGoStack(app, settings)
    NagSuppressions.add_stack_suppressions(
        stack, [NagPackSuppression(id=rule, reason=why) for rule, why in SUPPRESSED.items()]
    )
    cdk.Aspects.of(app).add(AwsSolutionsChecks())
    assembly = app.synth()
    (report,) = Path(assembly.directory).glob("AwsSolutions-*NagReport.csv")
    with report.open() as rows:
        findings = [r for r in csv.DictReader(rows) if r["Compliance"] == "Non-Compliant"]
    if findings:
        raise SystemExit(
            "cdk-nag AwsSolutions findings:\n"
            + "\n".join(f"  {r['Rule ID']} {r['Resource ID']}: {r['Rule Info']}" for r in findings)
        )
    template = assembly.get_stack_by_name(stack.stack_name).template
    build.mkdir(parents=True, exist_ok=True)
    (build / "template.json").write_text(json.dumps(template, indent=1, sort_keys=True))
    return template


def lint() -> None:
    """cfn-lint on the template: any error fails (warnings are printed)."""
    done = subprocess.run(
        [
            Path(sys.executable).parent / "cfn-lint",
            "--format",
            "parseable",
            BUILD / "template.json",
        ],
        capture_output=True,
        text=True,
    )
    # file:line:column:end line:end column:rule:message; a rule E… is an error
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if len(line.split(":")) < 7 or line.split(":")[5][:1] == "E"]
    for line in lines:
        print(line)
    if errors or done.returncode not in (0, 4, 8, 12):  # 4: warnings, 8: informational
        raise SystemExit(f"cfn-lint: {len(errors)} errors (exit {done.returncode})")


def deploy(settings, template: dict, template_bucket: str | None = None, wait_s: float = 3600):
    """Create or update the stack through a change set; its outputs."""
    import boto3

    cloudformation = boto3.client("cloudformation", region_name=settings.region)
    name = f"smartgo-analytics-{settings.stage}"
    body = json.dumps(template, separators=(",", ":"))
    where: dict = {"TemplateBody": body}
    if len(body) > 51_200:
        if not template_bucket:
            raise SystemExit(
                f"the template is {len(body)} bytes, over CloudFormation's 51,200 inline: "
                "give --template-bucket (an S3 bucket of the account to stage it in)"
            )
        s3 = boto3.client("s3", region_name=settings.region)
        key = f"smartgo-analytics/{name}-{int(time.time())}.json"
        s3.put_object(Bucket=template_bucket, Key=key, Body=body.encode())
        where = {"TemplateURL": s3.generate_presigned_url(
            "get_object", Params={"Bucket": template_bucket, "Key": key}, ExpiresIn=3600)}  # fmt: skip
    capabilities = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
    try:
        cloudformation.describe_stacks(StackName=name)
    except cloudformation.exceptions.ClientError:  # a new stack
        cloudformation.create_stack(
            StackName=name, Capabilities=capabilities, EnableTerminationProtection=True, **where
        )
    else:  # an update, as a change set: nothing changes until it is whole
        change = f"deploy-{int(time.time())}"
        cloudformation.create_change_set(
            StackName=name, ChangeSetName=change, Capabilities=capabilities, **where
        )
        _wait(cloudformation, name, change, wait_s)
        cloudformation.execute_change_set(StackName=name, ChangeSetName=change)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        status = stack["StackStatus"]
        if status.endswith("_COMPLETE") and "ROLLBACK" not in status:
            return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        if status.endswith("_FAILED") or "ROLLBACK" in status:
            raise SystemExit(f"stack {name}: {status} ({stack.get('StackStatusReason', '')})")
        time.sleep(5)
    raise SystemExit(f"stack {name} did not finish within {wait_s:.0f} s")


def _wait(cloudformation, name: str, change: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        described = cloudformation.describe_change_set(StackName=name, ChangeSetName=change)
        if described["Status"] == "CREATE_COMPLETE":
            return
        if described["Status"] == "FAILED":
            raise SystemExit(f"change set of {name}: {described.get('StatusReason', '')}")
        time.sleep(1)
    raise SystemExit(f"change set of {name} was not made within {wait_s:.0f} s")


def main(argv: list[str] | None = None) -> None:
    from deploy.smartgo_deploy.stack import Settings

    parser = argparse.ArgumentParser(prog="python -m deploy.smartgo_deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=("synth", "check", "deploy"))
    for f in dataclasses.fields(Settings):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None)
    parser.add_argument("--template-bucket", default=None)
    args = parser.parse_args(argv)
    settings = settings_from(args)
    template = synth(settings)
    print(f"{BUILD / 'template.json'}: {len(template['Resources'])} resources; cdk-nag: clean")
    if args.command in ("check", "deploy"):
        lint()
        print("cfn-lint: no errors")
    if args.command == "deploy":
        for key, value in deploy(settings, template, args.template_bucket).items():
            print(f"{key}: {value}")
