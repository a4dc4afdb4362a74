"""Durations with units, as written in the YAML config (`90s`, `12h`, `3d`, `30d`, `2w`)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_duration(value: Any) -> timedelta:
    """Turn `3d` into a timedelta; a bare number or a unit-less string is refused on purpose,
    since `30` could mean seconds or days and a wrong guess mails HCPs too often."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"expected a duration like 3d, got {value!r}")


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]


_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024 * 1024, "gb": 1024 ** 3}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?b)\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """`10MB`, `500KB`, `2048B` → bytes (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError(f"expected a size like 10MB, got {value!r}")


def format_size(value: int) -> str:
    for unit in ("GB", "MB", "KB"):
        size = _SIZE_UNITS[unit.lower()]
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}B"


Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str)]
