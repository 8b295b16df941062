"""Sending a notification: an HTTP POST of its stored JSON body, signed with the channel's secret.

Headers (config/README.md says how a receiver checks them): ``X-Radnode-Event``, ``Idempotency-Key``
(the same on every try), ``X-Radnode-Timestamp`` (Unix seconds of this try) and ``X-Radnode-Signature:
sha256=HEX``, the HMAC-SHA256 of ``TIMESTAMP.BODY``: the timestamp is signed too, so an old request
replayed later is refused by a receiver that checks its age. Network errors, HTTP 5xx, 408 and 429
are retried with the delivery backoff; any other answer outside 2xx is a refusal, not retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from node.config import NotificationChannel
from node.db import Notification
from node.errors import DestinationRefused, DestinationUnreachable

__all__ = ["body_bytes", "post", "signature"]

_RETRYABLE_STATUS = frozenset({408, 429})


def body_bytes(body: dict[str, Any]) -> bytes:
    """The stored body as sent: compact JSON, keys sorted, so each try sends the same bytes."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``TIMESTAMP.BODY`` under ``secret``."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def post(channel: NotificationChannel, notification: Notification) -> int:
    """POST ``notification`` to ``channel``; its HTTP status, or DestinationUnreachable / Refused."""
    assert channel.url is not None  # a webhook's (NotificationChannel validates it)
    body = body_bytes(notification.body)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Radnode-Event": notification.event.value,
        "Idempotency-Key": notification.idempotency_key,
        "X-Radnode-Timestamp": timestamp,
        "X-Radnode-Signature": signature(channel.secret(), timestamp, body),
    }
    try:
        response = httpx.post(channel.url, content=body, headers=headers, timeout=channel.timeout_seconds)
    except httpx.HTTPError as exc:
        raise DestinationUnreachable(f"cannot reach {channel.url}: {exc}") from exc
    status = response.status_code
    if status >= 500 or status in _RETRYABLE_STATUS:
        raise DestinationUnreachable(f"{channel.url} answered HTTP {status}")
    if not 200 <= status < 300:
        raise DestinationRefused(f"{channel.url} refused the notification: HTTP {status}", status)
    return status
