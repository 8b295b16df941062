"""Every error radnode raises on purpose, with a message a hospital admin can act on.

    RadnodeError
    ├── ConfigError             the YAML file is wrong (each problem names the key path and line)
    ├── BrokerUnreachable       a job could not be put on the broker: it waits in the database
    ├── DatabaseUnavailable     a command could not open the database (the message names it)
    ├── StorageError            an instance could not be stored
    │   ├── InvalidInstance     the dataset itself is unusable (missing/invalid UIDs, undecodable)
    │   └── OutOfSpace          the spool reached its free-space floor
    ├── DeliveryError           a result could not be sent to a destination
    │   ├── DestinationUnreachable   network / association failure: retried with backoff
    │   └── DestinationRefused       the peer answered with a failure status: not retried
    └── NotRetryable            `radnode retry` refused: the job/delivery is unknown, not failed,
                                or its files were removed by retention

Third-party exceptions (pydicom, pynetdicom, OSError) are translated once, where they occur,
with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnreachable",
    "ConfigError",
    "DatabaseUnavailable",
    "DeliveryError",
    "DestinationRefused",
    "DestinationUnreachable",
    "InvalidInstance",
    "NotRetryable",
    "OutOfSpace",
    "RadnodeError",
    "StorageError",
]


class RadnodeError(Exception):
    """Base class of radnode's own errors."""


class DatabaseUnavailable(RadnodeError):
    """The configured database cannot be opened (server down, SQLite folder missing, …)."""


class ConfigError(RadnodeError):
    """The configuration file is invalid; ``problems`` lists each one ("file:line: key: why")."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class BrokerUnreachable(RadnodeError):
    """The Celery broker did not take a message; the job stays QUEUED and is enqueued again."""


class StorageError(RadnodeError):
    """An instance could not be stored."""


class InvalidInstance(StorageError):
    """The received dataset cannot be stored as it is (the message says which attribute).

    ``undecodable`` distinguishes bytes that are not a dataset at all from a dataset that lacks
    or mangles a required attribute; the listener answers them with different statuses.
    """

    def __init__(self, message: str, *, undecodable: bool = False) -> None:
        self.undecodable = undecodable
        super().__init__(message)


class WrongPresentationContext(StorageError):
    """A C-STORE request's SOP Class is not the abstract syntax of the presentation context it
    came on (PS3.7 9.1.1.1): the peer negotiated one class and sent another."""


class DataSetTooLarge(StorageError):
    """A data set is larger than the listener takes (a deflated one inflates past
    ``node.max_inflated_mb``)."""


class OutOfSpace(StorageError):
    """Storing would take the spool below its configured free-space floor."""


class DeliveryError(RadnodeError):
    """A result could not be delivered."""


class DestinationUnreachable(DeliveryError):
    """The destination could not be reached or the association failed; worth retrying."""


class DestinationRefused(DeliveryError):
    """The destination answered with a failure status; retrying would not help."""

    def __init__(self, message: str, status: int | None) -> None:
        self.status = status  # the DIMSE status (or STOW-RS Failure Reason); None for a bare HTTP error
        super().__init__(message)


class NotRetryable(RadnodeError):
    """``radnode retry`` cannot re-queue this job or delivery (the message says why)."""
