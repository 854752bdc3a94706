"""The project's benchmarks (`python -m benchmarks`). They talk to loopback servers only: boto3 is
given placeholder credentials and a region unless the environment has its own."""

import os

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
