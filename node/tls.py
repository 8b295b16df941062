"""SSL contexts for DICOM TLS (PS3.15 Annex B): the listener's and each destination's.

Both sides use the BCP 195 floor that DCMTK's default "non-downgrading" profile also applies:
TLS 1.2 or newer with the library's default (forward-secret, AEAD) ciphers. File and key errors
become ConfigError naming the YAML key, so the admin sees which file to fix before any peer
connects.
"""

from __future__ import annotations

import ssl

from node.config import DestinationTLS, ListenerTLS
from node.errors import ConfigError

__all__ = ["client_context", "server_context"]


def _load(context: ssl.SSLContext, tls: ListenerTLS | DestinationTLS, key_path: str) -> None:
    """Load this side's certificate and the CA file, translating failures into ConfigError."""
    where = f"{key_path}.certificate/private_key"
    try:
        if tls.certificate is not None and tls.private_key is not None:
            context.load_cert_chain(tls.certificate, tls.private_key)
        where = f"{key_path}.ca_certificates"
        if tls.ca_certificates is not None:
            context.load_verify_locations(cafile=tls.ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{where}: cannot load the PEM file(s): {exc}"]) from exc


def server_context(tls: ListenerTLS, key_path: str = "node.tls") -> ssl.SSLContext:
    """The listener's context: its certificate; client certificates verified when required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, tls, key_path)
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(tls: DestinationTLS, key_path: str) -> ssl.SSLContext:
    """A destination's context: the peer verified against ``ca_certificates`` (or the system's)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.check_hostname
    if tls.ca_certificates is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load(context, tls, key_path)
    return context
