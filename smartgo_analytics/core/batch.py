"""Bedrock batch inference's files: the JSONL of records a job reads, and the answers it writes
(`<input>.out`: per record its `modelOutput`, the InvokeModel answer, or an `error`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from smartgo_analytics.core.models.base import EmbeddingModel

# What a job ends as: its answers to read, or a failure to name.
FINISHED = frozenset({"Completed", "PartiallyCompleted"})
ENDED_WITHOUT_ANSWERS = frozenset({"Failed", "Stopped", "Expired"})


def record_id(n: int) -> str:
    """The n-th record's id: 11 characters, as Bedrock's examples have them."""
    return f"R{n:010d}"


def records_jsonl(bodies: Iterable[tuple[str, bytes]]) -> bytes:
    """One line a record: `{"recordId", "modelInput"}`, the model's InvokeModel body as it is."""
    return b"".join(
        b'{"recordId": "%s", "modelInput": %s}\n' % (rid.encode(), body) for rid, body in bodies
    )


@dataclass
class Answers:
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # record id -> vector
    errors: dict[str, str] = field(default_factory=dict)  # record id -> why it has none


def read_answers(data: bytes, model: EmbeddingModel, dimension: int) -> Answers:
    """The vectors of a job's output, by record id; a record with an error, or an answer that is no
    vector of the length (checked as an on-demand answer is), is in `errors` with the reason."""
    answers = Answers()
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rid = str(record["recordId"])
        except (ValueError, KeyError, TypeError):
            continue  # a line that names no record cannot be mapped back: its record stays missing
        if "modelOutput" in record:
            try:
                output = json.dumps(record["modelOutput"]).encode()
                answers.vectors[rid] = model.vector(output, dimension)
            except ValueError as error:
                answers.errors[rid] = f"unusable answer: {error}"
        else:
            said = record.get("error")
            said = said if isinstance(said, dict) else {}
            answers.errors[rid] = (
                f"{said.get('errorCode', '?')} {str(said.get('errorMessage', 'no answer'))[:160]}"
            )
    return answers
