"""Every error radnode raises on purpose, with a message a hospital admin can act on.

One tree, so that ``except RadnodeError`` catches all of them and nothing else. Its root lives in
the lowest package (:mod:`dicom_sr.errors`; imports go node → inference → dicom_sr) and is
re-exported here; each branch is defined in the module named beside it.

    RadnodeError                    dicom_sr.errors
    ├── EncodingError               dicom_sr.errors: findings + source headers make no valid
    │                               DICOM object (also a ValueError)
    ├── InferenceError              inference.errors
    │   ├── VolumeError             the series cannot be turned into a Volume
    │   │   └── RegistrationError   another series cannot be put on the reference grid
    │   ├── RadiographError         the CR/DX image cannot be used as a 2-D radiograph
    │   ├── NotApplicable           the pipeline does not apply to this series
    │   ├── UnknownPipeline         a route names a pipeline radnode does not have (also a LookupError)
    │   └── ModelError              a configured model cannot be used
    │       ├── ModelFileMissing
    │       ├── ModelChecksumMismatch
    │       ├── ModelFormatError
    │       └── BackendUnavailable
    ├── ConfigError             the YAML file is wrong (each problem names the key path and line)
    ├── BrokerUnreachable       a job could not be put on the broker: it waits in the database
    ├── DatabaseUnavailable     a command could not open the database (the message names it)
    ├── StorageError            an instance could not be stored
    │   ├── InvalidInstance     the dataset itself is unusable (missing/invalid UIDs, undecodable)
    │   ├── WrongPresentationContext   its SOP Class is not its presentation context's
    │   ├── DataSetTooLarge     a deflated data set inflates past node.max_inflated_mb
    │   └── OutOfSpace          the spool reached its free-space floor
    ├── DeliveryError           a result (or a notification, node.notify) could not be sent
    │   ├── DestinationUnreachable   network / association failure: retried with backoff
    │   └── DestinationRefused       the peer answered with a failure status: not retried
    ├── NotRetryable            `radnode retry` refused: the job/delivery is unknown, not failed,
    │                           or its files were removed by retention
    │   internal signals, caught inside node where they are raised:
    ├── ProtocolError           node.receive.stream_to_disk: a peer broke PS3.8 inside a C-STORE
    ├── InflatesPastCeiling     node.spool.dicom_header: becomes DataSetTooLarge in the store
    ├── _Unsure                 node.spool.dicom_header: the fast scan hands over to pydicom
    │   └── _PastEnd            a length or header runs past the end of the bytes
    └── _KeyedError             node.config: a cross-field problem, becomes a ConfigError line
                                (also a ValueError, which pydantic reports)

Third-party exceptions (pydicom, pynetdicom, OSError) are translated once, where they occur,
with ``raise ... from exc``.
"""

from __future__ import annotations

from dicom_sr.errors import RadnodeError

__all__ = [
    "BrokerUnreachable",
    "ConfigError",
    "DataSetTooLarge",
    "DatabaseUnavailable",
    "DeliveryError",
    "DestinationRefused",
    "DestinationUnreachable",
    "InvalidInstance",
    "NotRetryable",
    "OutOfSpace",
    "RadnodeError",
    "StorageError",
    "WrongPresentationContext",
]


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
