"""Plain functions over plain data: no servers, no Dagster."""
