"""E-mail notifications: the stored JSON body sent by SMTP, upgraded with STARTTLS (RFC 3207).

The Message-ID is derived from the idempotency key, so a mail resent after a crash is recognisably the
same message (``Idempotency-Key`` header too). SMTP 5xx answers are refusals (not retried); no
connection, a 4xx answer or a broken session are retried.
"""

from __future__ import annotations

import json
import smtplib
import ssl
from email.message import EmailMessage

from node.config import NotificationChannel
from node.db import Notification
from node.errors import DestinationRefused, DestinationUnreachable

__all__ = ["message_of", "send_mail"]

_PERMANENT = 500  # SMTP reply codes from here on refuse for good (RFC 5321 4.2.1)


def message_of(channel: NotificationChannel, notification: Notification) -> EmailMessage:
    """The mail: a short subject, the JSON body as text, the event and key as headers."""
    body = notification.body
    job = body["job"]
    message = EmailMessage()
    message["Subject"] = f"radnode: {notification.event.value} job {job['id']} ({job['pipeline']})"
    message["From"] = channel.sender
    message["To"] = ", ".join(channel.to)
    message["Message-ID"] = f"<{notification.idempotency_key}@radnode>"
    message["Idempotency-Key"] = notification.idempotency_key
    message["X-Radnode-Event"] = notification.event.value
    message.set_content(json.dumps(body, indent=2, sort_keys=True))
    return message


def send_mail(channel: NotificationChannel, notification: Notification) -> None:
    """Send ``notification`` to ``channel``'s recipients, or raise DestinationUnreachable / Refused."""
    assert channel.host is not None  # an smtp channel's (NotificationChannel validates it)
    where = f"{channel.host}:{channel.port}"
    password = channel.password()
    try:
        with smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout_seconds) as smtp:
            if channel.starttls:
                context = ssl.create_default_context(
                    cafile=str(channel.ca_certificates) if channel.ca_certificates else None)
                smtp.starttls(context=context)
            if channel.username is not None and password is not None:
                smtp.login(channel.username, password)
            smtp.send_message(message_of(channel, notification))
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        if all(code >= _PERMANENT for code in codes):
            raise DestinationRefused(f"{where} refused the recipients: {exc.recipients}", min(codes)) from exc
        raise DestinationUnreachable(f"{where} deferred the recipients: {exc.recipients}") from exc
    except smtplib.SMTPResponseException as exc:
        if exc.smtp_code >= _PERMANENT:
            raise DestinationRefused(f"{where} refused the mail: {exc.smtp_code} {exc.smtp_error!r}",
                                     exc.smtp_code) from exc
        raise DestinationUnreachable(f"{where} answered {exc.smtp_code} {exc.smtp_error!r}") from exc
    except (smtplib.SMTPException, OSError) as exc:  # no connection, TLS failure, session broken
        raise DestinationUnreachable(f"cannot send mail through {where}: {exc}") from exc
