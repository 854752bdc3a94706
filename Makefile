PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo dev test test-fast bench lint clean deploy-check deploy image

# Installed at the versions uv.lock pins (the image installs from it too, with hashes).
$(STAMP): pyproject.toml uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv==0.13.8
	$(BIN)/uv export --quiet --frozen --all-extras --no-emit-project --no-hashes \
		--format requirements-txt -o $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e '.[local,dev,deploy]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/smartgo-analytics demo

dev: $(STAMP)
	$(BIN)/smartgo-analytics dev

test: $(STAMP)
	$(BIN)/python -m pytest

# What starts no process (no embedded Postgres, moto, dagster dev, browser or CDK): an answer in minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser and not e2e"

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# The production stack: synthesized, held to the AwsSolutions rules and cfn-lint, deployed to moto's
# CloudFormation on 127.0.0.1 and the prod day run against what it made (test_deploy.py).
deploy-check: $(STAMP)
	$(BIN)/python -m deploy.smartgo_deploy check
	$(BIN)/python -m pytest -q -p no:cacheprovider smartgo_analytics_tests/test_deploy.py

# The one deploy command (AWS credentials from the chain): make deploy STAGE=prod REGION=eu-west-1
#   VPC=vpc-… PRIVATE_SUBNETS=subnet-a,subnet-b PUBLIC_SUBNETS=subnet-c,subnet-d IMAGE=<uri:tag>
#   CERTIFICATE=<acm arn> ALLOWED_CIDR=<cidr> DAGSTER_HOST=… PAGE_HOST=… TEMPLATE_BUCKET=<bucket>
deploy: $(STAMP)
	SMARTGO_DEPLOY_STAGE=$(STAGE) SMARTGO_DEPLOY_REGION=$(REGION) SMARTGO_DEPLOY_VPC_ID=$(VPC) \
	SMARTGO_DEPLOY_PRIVATE_SUBNETS=$(PRIVATE_SUBNETS) SMARTGO_DEPLOY_PUBLIC_SUBNETS=$(PUBLIC_SUBNETS) \
	SMARTGO_DEPLOY_IMAGE=$(IMAGE) SMARTGO_DEPLOY_CERTIFICATE_ARN=$(CERTIFICATE) \
	SMARTGO_DEPLOY_ALLOWED_CIDR=$(ALLOWED_CIDR) SMARTGO_DEPLOY_DAGSTER_HOST=$(DAGSTER_HOST) \
	SMARTGO_DEPLOY_PAGE_HOST=$(PAGE_HOST) \
	$(BIN)/python -m deploy.smartgo_deploy deploy --template-bucket '$(TEMPLATE_BUCKET)'

image:
	docker buildx build --platform linux/arm64,linux/amd64 -f deploy/Dockerfile -t $(IMAGE) --push .

lint: $(STAMP)
	$(BIN)/uv lock --check  # uv.lock in step with pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf .smartgo .pytest_cache
