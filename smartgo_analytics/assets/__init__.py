"""One module per asset family."""

import warnings

# Backfill policies are how this project keeps backfills sane; Dagster still labels the parameter beta.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`")
