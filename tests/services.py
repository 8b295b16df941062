"""The machine's PostgreSQL and Redis for tests: a fresh database each, skipped on a laptop without
them, failed in CI (where they must be there)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from tests.scale_out import claimed_redis_db

__all__ = ["postgres_database", "redis_database", "service_unavailable"]

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def service_unavailable(reason: str) -> None:
    """Skip on a laptop without the services; fail in CI, where they must be there."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"radnode_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_DSN, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        service_unavailable(f"PostgreSQL is not running on 127.0.0.1:5432: {exc}")
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def redis_database(candidates: tuple[int, ...]) -> Iterator[str]:
    """The URL of a Redis DB among ``candidates`` that no concurrent test run uses (flushed)."""
    try:
        with claimed_redis_db(candidates) as url:
            yield url
    except redis.ConnectionError as exc:
        service_unavailable(f"Redis is not running on 127.0.0.1:6379: {exc}")
