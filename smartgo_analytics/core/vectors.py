"""What a model's answer must be before its vector is stored: nothing it says is trusted."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def answer_json(body: bytes) -> Any:
    """A model's answer parsed as JSON, or ValueError with the reason."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"answer is not JSON ({len(body)} bytes)") from None
    except RecursionError:
        raise ValueError(f"answer nests too deeply ({len(body)} bytes)") from None
    except (ValueError, TypeError) as error:  # a number of too many digits, and the like
        raise ValueError(f"answer is not usable JSON: {str(error)[:80]}") from None


def vector_from_answer(body: bytes, dimension: int, field: str = "embedding") -> np.ndarray:
    """The vector under `field` of a JSON object answer (`checked_vector`)."""
    payload = answer_json(body)
    if not isinstance(payload, dict) or field not in payload:
        raise ValueError(f"answer has no {field!r}")
    return checked_vector(payload[field], dimension, field)


def checked_vector(values: Any, dimension: int, field: str = "embedding") -> np.ndarray:
    """`values` as a float32 vector, or ValueError with the reason: not a list, another length,
    anything but finite numbers (NaN and infinities included, and values too large for float32),
    or all zeros."""
    if not isinstance(values, list):
        raise ValueError(f"{field!r} is a {type(values).__name__}, not a list")
    if len(values) != dimension:
        raise ValueError(f"{len(values)} values, asked for {dimension}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError("the vector holds non-numbers")
    try:
        with np.errstate(over="ignore"):
            vector = np.asarray(values, dtype=np.float32)
    except OverflowError:
        raise ValueError("the vector holds numbers too large for a float") from None
    if not np.isfinite(vector).all():
        raise ValueError("the vector holds NaN, infinity or values beyond float32")
    if not vector.any():
        raise ValueError("the vector is all zeros")
    return vector


def unit(vectors: np.ndarray) -> np.ndarray:
    """The vectors scaled to length 1 (a zero vector stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)
