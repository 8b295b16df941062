"""Who may associate with the node: ``node.allowed_callers``, checked on A-ASSOCIATE-RQ.

Each rule names a calling AE title, a source network, or both; a caller is admitted when one
rule matches in full. No rules (the default) admits everyone. A caller that is turned away gets
an A-ASSOCIATE-RJ (PS3.8 9.3.4), rejected-permanent from the DUL service user, with the
diagnostic that tells its administrator what to fix:

- its calling AE title is in no rule: "calling AE title not recognised" (3);
- its AE title is known (or rules name networks only) but its address is outside every rule's
  network: "no reason given" (1), as PS3.8 has no diagnostic for the transport address, and
  telling a stranger which addresses are trusted would help it more than its administrator.
"""

from __future__ import annotations

import ipaddress
import logging
from enum import IntEnum
from typing import NamedTuple

from pynetdicom import evt

from node.config import AllowedCaller

__all__ = ["AccessPolicy", "Decision", "RejectDiagnostic"]

log = logging.getLogger("radnode.access")

REJECTED_PERMANENT = 0x01  # A-ASSOCIATE-RJ Result (PS3.8 Table 9-21)
SOURCE_SERVICE_USER = 0x01  # Source: DICOM UL service-user


class RejectDiagnostic(IntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. for Source "DICOM UL service-user" (PS3.8 Table 9-21)."""

    NO_REASON_GIVEN = 0x01
    CALLING_AE_TITLE_NOT_RECOGNIZED = 0x03


class Decision(NamedTuple):
    """Admit (``diagnostic`` None) or reject with ``diagnostic``; ``why`` is for the log."""

    diagnostic: RejectDiagnostic | None
    why: str

    @property
    def admitted(self) -> bool:
        return self.diagnostic is None


class AccessPolicy:
    """The configured rules, with networks parsed once."""

    def __init__(self, rules: tuple[AllowedCaller, ...] | list[AllowedCaller]) -> None:
        self.rules = [
            (rule.ae_title, ipaddress.ip_network(rule.network) if rule.network else None)
            for rule in rules
        ]

    def decide(self, calling_ae_title: str, address: str) -> Decision:
        """Whether ``calling_ae_title`` connecting from ``address`` may associate, and why."""
        if not self.rules:
            return Decision(None, "no allowed_callers configured")
        ae_title = calling_ae_title.strip()
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        known_title = False
        for rule_title, network in self.rules:
            if rule_title is not None and rule_title != ae_title:
                continue
            known_title = known_title or rule_title is not None
            if network is None or (ip is not None and ip.version == network.version and ip in network):
                return Decision(None, "allowed")
        if known_title or all(title is None for title, _ in self.rules):
            return Decision(
                RejectDiagnostic.NO_REASON_GIVEN, f"address {address} is outside allowed_callers"
            )
        return Decision(
            RejectDiagnostic.CALLING_AE_TITLE_NOT_RECOGNIZED,
            f"calling AE title {ae_title!r} is not in allowed_callers",
        )

    def on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED handler: answer A-ASSOCIATE-RJ before any negotiation, and log it.

        pynetdicom skips negotiation for an association its EVT_REQUESTED handler rejected.
        """
        assoc = event.assoc
        request = assoc.requestor.primitive
        if request is None:  # pynetdicom keeps it from the moment the request arrives
            raise RuntimeError("EVT_REQUESTED without an A-ASSOCIATE-RQ")
        calling = str(request.calling_ae_title)
        address = assoc.requestor.address
        decision = self.decide(calling, address)
        diagnostic = decision.diagnostic
        if diagnostic is None:  # admitted
            return
        log.warning(
            "association rejected calling_ae=%s address=%s diagnostic=%s reason=%s",
            calling.strip(), address, diagnostic.name.lower(), decision.why,
        )
        assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER, int(diagnostic))
        assoc.is_rejected = True
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()
