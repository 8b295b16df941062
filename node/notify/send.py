"""One try of one notification, by its channel's kind: a webhook POST or an e-mail; the outcome recorded.

Unreachable receivers (and secrets that cannot be read, which the admin can fix) are retried with
the delivery backoff up to ``delivery.max_attempts``, then marked failed; a refusal is not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from node.config import Config, NotificationChannel
from node.db import Database, DeliveryState, Notification, utcnow
from node.errors import ConfigError, DestinationRefused, DestinationUnreachable
from node.notify.mail import send_mail
from node.notify.webhook import post

__all__ = ["SENDERS", "attempt_notification"]

log = logging.getLogger("radnode.notify")

#: ``notifications.NAME.kind`` → how one notification is sent (a status code, or None)
SENDERS: dict[str, Callable[[NotificationChannel, Notification], int | None]] = {
    "webhook": post, "smtp": send_mail,
}


def attempt_notification(db: Database, config: Config, notification_id: int) -> float | None:
    """Try notification ``notification_id`` once; seconds until the next try, or None when done.

    As ``node.delivery.send.attempt_delivery``: the attempt is counted (committed) before sending,
    the outcome recorded after it, for ``radnode status``.
    """
    with db.session() as session:
        notification = session.get(Notification, notification_id)
        if notification is None or notification.state in (DeliveryState.SENT, DeliveryState.FAILED):
            return None
        notification.attempts += 1
        attempt, name = notification.attempts, notification.channel
    channel = config.notifications.get(name)
    state, error, status, retry_in = DeliveryState.SENT, "", None, None
    if channel is None:
        state, error = DeliveryState.FAILED, f"notification channel {name!r} is no longer configured"
    else:
        try:
            status = SENDERS[channel.kind](channel, notification)
        except DestinationRefused as exc:
            state, error, status = DeliveryState.FAILED, str(exc), exc.status
        except (DestinationUnreachable, ConfigError) as exc:  # a secret the admin can fix: retried too
            error = str(exc)
            if attempt >= config.delivery.max_attempts:
                state, error = DeliveryState.FAILED, f"gave up after {attempt} attempts: {exc}"
            else:
                state, retry_in = DeliveryState.RETRYING, config.delivery.backoff_seconds(attempt)
    with db.session() as session:
        notification = session.get_one(Notification, notification_id)  # notification rows are never deleted
        notification.state, notification.last_error, notification.last_status = state, error, status
        if state is DeliveryState.SENT:
            notification.sent_at = utcnow()
        notification.next_attempt_at = (
            utcnow() + timedelta(seconds=retry_in) if retry_in is not None else None
        )
    if state is not DeliveryState.SENT:
        log.warning("notification %d to %s: %s (%s)", notification_id, name, state.value, error)
    return retry_in
