"""The one clock of hubstack's records (CI reports, webhook builds): UTC, always.

`timestamp()` is for people and JSON (ISO 8601); `run_stamp()` is for ids and file
names, which must sort in time order and contain no ':'.
"""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp() -> str:
    """Now as ISO 8601 in UTC, to the millisecond (two builds a second apart still order)."""
    return utc_now().isoformat(timespec="milliseconds")


def run_stamp() -> str:
    """Now as a compact UTC stamp for ids and file names, e.g. 20261204T053012123456Z."""
    return utc_now().strftime("%Y%m%dT%H%M%S%fZ")
