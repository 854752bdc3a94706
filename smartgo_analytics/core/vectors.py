"""What a model's answer must be before its vector is stored: nothing it says is trusted."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def vector_from_answer(body: bytes, dimension: int, field: str = "embedding") -> np.ndarray:
    """The answer's vector as float32, or ValueError with the reason: an answer that is not a JSON
    object, lacks the field, has another length, holds anything but finite numbers (NaN and
    infinities included, and values too large for float32), or is all zeros."""
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"answer is not JSON ({len(body)} bytes)") from None
    except RecursionError:
        raise ValueError(f"answer nests too deeply ({len(body)} bytes)") from None
    except (ValueError, TypeError) as error:  # a number of too many digits, and the like
        raise ValueError(f"answer is not usable JSON: {str(error)[:80]}") from None
    if not isinstance(payload, dict) or field not in payload:
        raise ValueError(f"answer has no {field!r}")
    values = payload[field]
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
