"""Notifications: job events told to webhooks, through an outbox table (``Notification`` rows)."""
