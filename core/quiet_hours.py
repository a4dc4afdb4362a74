"""Quiet hours in the HCP's local time: when a window is running, the email waits until it
ends. The HCP's zone is the directory's `timezone` column, else the main zone of their state."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from config.schema import WEEKDAYS, QuietHours

STATE_ZONES = {
    "AL": "America/Chicago", "AK": "America/Anchorage", "AZ": "America/Phoenix", "AR": "America/Chicago",
    "CA": "America/Los_Angeles", "CO": "America/Denver", "CT": "America/New_York", "DE": "America/New_York",
    "DC": "America/New_York", "FL": "America/New_York", "GA": "America/New_York", "HI": "Pacific/Honolulu",
    "ID": "America/Boise", "IL": "America/Chicago", "IN": "America/Indiana/Indianapolis", "IA": "America/Chicago",
    "KS": "America/Chicago", "KY": "America/New_York", "LA": "America/Chicago", "ME": "America/New_York",
    "MD": "America/New_York", "MA": "America/New_York", "MI": "America/Detroit", "MN": "America/Chicago",
    "MS": "America/Chicago", "MO": "America/Chicago", "MT": "America/Denver", "NE": "America/Chicago",
    "NV": "America/Los_Angeles", "NH": "America/New_York", "NJ": "America/New_York", "NM": "America/Denver",
    "NY": "America/New_York", "NC": "America/New_York", "ND": "America/Chicago", "OH": "America/New_York",
    "OK": "America/Chicago", "OR": "America/Los_Angeles", "PA": "America/New_York", "RI": "America/New_York",
    "SC": "America/New_York", "SD": "America/Chicago", "TN": "America/Chicago", "TX": "America/Chicago",
    "UT": "America/Denver", "VT": "America/New_York", "VA": "America/New_York", "WA": "America/Los_Angeles",
    "WV": "America/New_York", "WI": "America/Chicago", "WY": "America/Denver", "PR": "America/Puerto_Rico",
    "GU": "Pacific/Guam", "VI": "America/St_Thomas", "AS": "Pacific/Pago_Pago", "MP": "Pacific/Saipan",
}
"""Each state's main zone (where most of its people live) for states spanning several."""
DEFAULT_ZONE = "America/New_York"


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def hcp_zone(hcp: Mapping[str, Any]) -> ZoneInfo:
    """The directory's `timezone`, else the state's main zone, else US Eastern."""
    for name in (hcp.get("timezone"), STATE_ZONES.get(str(hcp.get("state") or "").upper())):
        zone = _zone(name) if name else None
        if zone is not None:
            return zone
    return _zone(DEFAULT_ZONE)  # type: ignore[return-value]


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _in_nightly(window: QuietHours, local: datetime) -> bool:
    if window.from_ is None or window.to is None:
        return False
    start, end, now = _clock(window.from_), _clock(window.to), local.time()
    if start <= end:
        return start <= now < end
    return now >= start or now < end


def quiet_until(window: QuietHours | None, hcp: Mapping[str, Any], now: datetime) -> datetime | None:
    """When the window running at `now` (UTC) ends, in UTC; None when no window is running."""
    if window is None:
        return None
    zone = hcp_zone(hcp)
    local = now.astimezone(zone)
    days = set(window.days)
    moved = False
    for _ in range(16):  # a quiet day, then a night: a few steps at most
        if WEEKDAYS[local.weekday()] in days:
            following = local.date() + timedelta(days=1)
            local = datetime(following.year, following.month, following.day, tzinfo=zone)
            moved = True
            continue
        if _in_nightly(window, local):
            end = _clock(window.to)  # type: ignore[arg-type]
            day = local.date() if local.time() < end else local.date() + timedelta(days=1)
            local = datetime(day.year, day.month, day.day, end.hour, end.minute, tzinfo=zone)
            # A wall time skipped by a DST change is read with the offset before it; take it
            # through UTC so the moment is real.
            local = local.astimezone(ZoneInfo("UTC")).astimezone(zone)
            moved = True
            continue
        break
    return local.astimezone(ZoneInfo("UTC")) if moved else None


def describe_window(window: QuietHours) -> str:
    parts = []
    if window.from_ is not None:
        parts.append(f"{window.from_}–{window.to}")
    if window.days:
        parts.append(", ".join(window.days))
    return "; ".join(parts)


def hold_reason(window: QuietHours, hcp: Mapping[str, Any], until: datetime) -> str:
    zone = hcp_zone(hcp)
    local = until.astimezone(zone)
    return (
        f"quiet hours ({describe_window(window)} in {zone.key}): held until "
        f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({until:%Y-%m-%d %H:%M} UTC)"
    )
