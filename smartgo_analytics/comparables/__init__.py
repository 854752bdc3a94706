"""What similar sold items went for: the k nearest items of a tenant by picture, and the price band
they suggest. `comparables()` is for notebooks; `smartgo-analytics comparables` prints it, and the
page (`web`) shows it.

    from smartgo_analytics.comparables import comparables
    found = comparables(product_id="SG-2025-06-01-0042", k=10)
    found.suggested, found.items[0]

`asked` checks the question and reads the picture asked about, `search` answers it from the
index, `answer` holds what is answered and the price band.
"""

from smartgo_analytics.comparables.answer import (
    SHOWN,
    Comparable,
    Comparables,
    PriceBand,
    suggested_band,
    weighted_quantiles,
)
from smartgo_analytics.comparables.asked import (
    MAX_IMAGE_BYTES,
    MAX_K,
    ComparablesError,
    UnusableImage,
    read_image_file,
)
from smartgo_analytics.comparables.search import DeploymentResources, Source, comparables

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_K",
    "SHOWN",
    "Comparable",
    "Comparables",
    "ComparablesError",
    "DeploymentResources",
    "PriceBand",
    "Source",
    "UnusableImage",
    "comparables",
    "read_image_file",
    "suggested_band",
    "weighted_quantiles",
]
