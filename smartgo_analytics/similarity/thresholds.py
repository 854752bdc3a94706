"""Where the embedding-quality check warns: read by `similarity.quality`, set by `settings` (kept
apart from the measuring so that the settings load without NumPy)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class QualityThresholds:
    """Below or above these the embedding-quality check warns (docs/operating.md, "Embedding quality")."""

    min_neighbour_agreement: float = 0.5
    max_drift: float = 0.2
    max_duplicate_share: float = 0.01
