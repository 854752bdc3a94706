"""SmartGo analytics: daily pricing-intelligence and QuickSight pipelines as Dagster assets."""
