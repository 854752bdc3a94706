"""The comparables page: `smartgo-analytics web`."""
