"""Request limits: the daemon's defaults, and what ``GetInfo``
reports as the limits in force."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits on appends. The defaults are the daemon's."""

    max_event_data_bytes: int = 1 * MIB
    max_events_per_append: int = 1000
    max_append_bytes: int = 16 * MIB
    max_metadata_entries: int = 64
    max_metadata_bytes: int = 16 * KIB
