"""Durations and sizes as people write them in settings and options: `7d`, `128MB`."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(\d+)([smhd])")
_SIZE = re.compile(r"(\d+)(B|KB|MB|GB)")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def parse_duration(text: str) -> timedelta:
    """`7d`, `36h`, `90m`, `0s`: a whole number and one unit (s, m, h, d)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 7d, 36h, 90m or 0s")
    return timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)])


def parse_size(text: str) -> int:
    """`128MB`, `1GB`, `512KB`, `100B`: a whole number and one unit (binary multiples)."""
    match = _SIZE.fullmatch(text.strip().upper())
    if not match:
        raise ValueError(f"{text!r} is not a size like 128MB, 1GB or 512KB")
    return int(match.group(1)) * _BYTES[match.group(2)]
