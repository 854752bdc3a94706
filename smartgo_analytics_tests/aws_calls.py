"""Every AWS call made through boto3 in a block, as the IAM actions that allow them, recorded with
botocore's own event hooks (`before-call` on each client made meanwhile), and the template's
verdict on them: which actions a role of `deploy/build/template.json` allows.

pyarrow's own S3 client (the Iceberg files pyiceberg reads and writes) is not boto3: its calls are
GetObject, HeadObject, PutObject (and multipart), ListObjectsV2 and DeleteObject on the warehouse,
which the object store's boto3 calls record too (`test_deploy.py` names them).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import botocore.session

# The IAM action of an operation is `<signing name>:<operation>`, except these.
IAM_ACTIONS = {
    ("s3", "ListObjectsV2"): ("s3:ListBucket",),
    ("s3", "ListObjects"): ("s3:ListBucket",),
    ("s3", "HeadBucket"): ("s3:ListBucket",),
    ("s3", "HeadObject"): ("s3:GetObject",),
    ("s3", "CopyObject"): ("s3:GetObject", "s3:PutObject"),
    ("s3", "DeleteObjects"): ("s3:DeleteObject",),
    ("s3", "CreateMultipartUpload"): ("s3:PutObject",),
    ("s3", "UploadPart"): ("s3:PutObject",),
    ("s3", "CompleteMultipartUpload"): ("s3:PutObject",),
    ("s3", "ListObjectVersions"): ("s3:ListBucketVersions",),
    # Creating a batch job hands Bedrock the job's service role.
    ("bedrock", "CreateModelInvocationJob"): ("bedrock:CreateModelInvocationJob", "iam:PassRole"),
}


def iam_actions(signing_name: str, operation: str) -> tuple[str, ...]:
    return IAM_ACTIONS.get((signing_name, operation), (f"{signing_name}:{operation}",))


RECORD_TO = "SMARTGO_TEST_AWS_CALLS"  # a process started with it appends its actions there


def in_processes(directory: Path, into: Path) -> dict[str, str]:
    """Environment for a process of its own (a command, the page) whose AWS calls are recorded
    into `into`, a line an action, as they are made (the process may be killed)."""
    (directory / "sitecustomize.py").write_text(
        "from smartgo_analytics_tests.aws_calls import record_into_file\nrecord_into_file()\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([str(directory), root, os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, RECORD_TO: str(into)}


def record_into_file() -> None:
    """In a process started with `in_processes`: record its AWS calls into the file named."""
    into = os.environ.get(RECORD_TO)
    if not into:
        return
    global _for_life  # kept: a recording that is collected ends (its `finally` runs)
    _for_life = recorded_aws_calls(on_action=lambda a: _append(into, a))
    _for_life.__enter__()


_for_life = None


def _append(path: str, action: str) -> None:
    with open(path, "a") as out:
        out.write(action + "\n")


def recorded_in(path: Path) -> set[str]:
    return set(path.read_text().split()) if path.exists() else set()


@contextlib.contextmanager
def recorded_aws_calls(on_action=None) -> Iterator[set[str]]:
    """The IAM actions of the boto3 calls made in the block (by clients made in it)."""
    actions: set[str] = set()
    lock = threading.Lock()
    original = botocore.session.Session.create_client

    def record(model, **_):
        signing = model.service_model.signing_name or model.service_model.endpoint_prefix
        with lock:
            for action in iam_actions(signing, model.name):
                if action not in actions and on_action is not None:
                    on_action(action)
                actions.add(action)

    def create_client(self, *args, **kwargs):
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-call", record)
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
    try:
        yield actions
    finally:
        botocore.session.Session.create_client = original  # type: ignore[method-assign]


def role_statements(template: dict, role: str) -> list[dict]:
    """The Allow statements of the role with this logical id: its inline policies and every
    AWS::IAM::Policy or ManagedPolicy attached to it."""
    resources = template["Resources"]
    statements = []
    for policy in resources[role]["Properties"].get("Policies", []):
        statements += policy["PolicyDocument"]["Statement"]
    for resource in resources.values():
        if resource["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            continue
        if {"Ref": role} in resource["Properties"].get("Roles", []):
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return [s for s in statements if s.get("Effect") == "Allow"]


def allowed_actions(template: dict, role: str) -> list[str]:
    actions: list[str] = []
    for statement in role_statements(template, role):
        action = statement.get("Action", [])
        actions += [action] if isinstance(action, str) else action
    return actions


def not_allowed(actions: set[str], template: dict, role: str) -> set[str]:
    """The actions no Allow statement of the role names (exactly, or by an IAM wildcard)."""
    allowed = allowed_actions(template, role)
    return {a for a in actions if not any(fnmatch.fnmatchcase(a, p) for p in allowed)}
