"""Asking a running server whether it is ready, for every test that starts one."""

from __future__ import annotations

import urllib.request


def answers_ping(base_url: str) -> bool:
    """True when GET /ping answers 200; False while it answers otherwise or not at all."""
    try:
        with urllib.request.urlopen(f"{base_url}/ping", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
