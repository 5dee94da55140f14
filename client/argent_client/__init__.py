"""argent_client: talk to argentd (wire types, clients, argentctl)."""

from __future__ import annotations

__version__ = "0.1.0"
