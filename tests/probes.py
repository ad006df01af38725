"""Asking a running server whether it is ready, and for predictions, for every test that
starts one."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def answers_ping(base_url: str) -> bool:
    """True when GET /ping answers 200; False while it answers otherwise or not at all."""
    try:
        with urllib.request.urlopen(f"{base_url}/ping", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def post(base_url: str, body: bytes, content_type: str, timeout: float = 30) -> tuple[int, object]:
    """POST /invocations; the status and the decoded JSON answer, errors included."""
    request = urllib.request.Request(
        f"{base_url}/invocations", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
