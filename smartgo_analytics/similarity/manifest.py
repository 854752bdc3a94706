"""A tenant's index manifest: its segments, the days each holds, and the centre each graph was
built around; committed as one JSON object, which is what makes a day's update atomic.

A day is added to the tenant's newest segment while that stays under SEGMENT_VECTORS, otherwise it
starts a new one; a day materialised again replaces its own vectors in the segment that holds it.
So a day's update loads at most one segment, whatever the index's size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from smartgo_analytics.layout import index_space
from smartgo_analytics.similarity.graph import INDEX_OPTIONS

SEGMENT_VECTORS = 200_000


class IndexOfAnotherModel(ValueError):
    """A manifest of another model than its place says: two models' vectors are never mixed."""


class StaleIndexError(ValueError):
    """An index whose graphs were built with other INDEX_OPTIONS: its next update builds them again."""


@dataclass
class Segment:
    name: str
    days: dict[str, int] = field(default_factory=dict)  # ISO day -> vectors
    # The mean of the unit vectors its graph was built from, and how many there were. None for a
    # graph of other INDEX_OPTIONS, which must be built again before it is searched.
    centre: np.ndarray | None = None
    centred_on: int = 0

    @property
    def count(self) -> int:
        return sum(self.days.values())


@dataclass
class Manifest:
    tenant: str
    dimension: int
    segments: list[Segment] = field(default_factory=list)
    model: str = ""  # whose vectors it holds: each model and length has its own index (`space`)

    @property
    def space(self) -> str:
        return index_space(self.model, self.dimension)

    @property
    def count(self) -> int:
        return sum(segment.count for segment in self.segments)

    def days(self) -> dict[str, int]:
        return {day: n for segment in self.segments for day, n in segment.days.items()}

    def holding(self, day: date) -> Segment | None:
        return next((s for s in self.segments if day.isoformat() in s.days), None)

    def target(self, day: date, rows: int) -> Segment | None:
        """The segment the day goes into: the one holding it, else the newest while the day fits
        under SEGMENT_VECTORS; None for a new one."""
        holding = self.holding(day)
        if holding is not None:
            return holding
        if self.segments and self.segments[-1].count + rows <= SEGMENT_VECTORS:
            return self.segments[-1]
        return None

    def stale(self) -> list[Segment]:
        return [s for s in self.segments if s.centre is None]

    def require_model(self, model: str) -> None:
        """IndexOfAnotherModel when the index holds another model's vectors than `model`'s."""
        if self.model != model:
            raise IndexOfAnotherModel(
                f"tenant {self.tenant!r}'s index of {model} names vectors of {self.model}: the "
                "two are never mixed; was it copied there by hand?"
            )

    def require_current(self) -> None:
        if self.stale():
            raise StaleIndexError(
                f"tenant {self.tenant!r}'s index was built with other options: materialise "
                "similarity_index for any day to build it again"
            )

    def to_json(self) -> bytes:
        segments = [
            {
                "name": s.name,
                "days": dict(sorted(s.days.items())),
                "centred_on": s.centred_on,
                "centre": None if s.centre is None else [round(float(x), 6) for x in s.centre],
            }
            for s in self.segments
        ]
        body = {
            "tenant": self.tenant,
            "dimension": self.dimension,
            "model": self.model,
            "index": INDEX_OPTIONS,
            "segments": segments,
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        body = json.loads(data)
        current = body.get("index") == INDEX_OPTIONS
        segments = [
            Segment(
                s["name"],
                dict(s["days"]),
                np.asarray(s["centre"], np.float32) if current and s.get("centre") else None,
                int(s.get("centred_on", 0)),
            )
            for s in body["segments"]
        ]
        return cls(body["tenant"], int(body["dimension"]), segments, str(body.get("model") or ""))
