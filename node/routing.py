"""Routing: which pipelines a completed series goes to, and where their results are sent.

Rules come from the YAML ``routes`` list; every matching rule adds its pipelines, and the
destinations of a pipeline are the union over the rules that named it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.config import Route

__all__ = ["Assignment", "assign", "matches"]


@dataclass(frozen=True)
class Assignment:
    """One pipeline to run on a series, and the destinations of its results."""

    pipeline: str
    destinations: tuple[str, ...]


def _as_texts(value: object) -> list[str]:
    if isinstance(value, MultiValue | list | tuple):
        return [str(item).strip() for item in value]
    return [] if value is None else [str(value).strip()]


def matches(route: Route, header: Dataset) -> bool:
    """True when every attribute in ``route.match`` has one of the accepted values."""
    for keyword, expected in route.match.items():
        accepted = {str(item) for item in (expected if isinstance(expected, list) else [expected])}
        if not accepted.intersection(_as_texts(header.get(keyword))):
            return False
    return True


def assign(routes: Sequence[Route], header: Dataset) -> list[Assignment]:
    """The pipelines for a series whose first instance's header is ``header``."""
    destinations: dict[str, list[str]] = {}
    for route in routes:
        if matches(route, header):
            for pipeline in route.pipelines:
                targets = destinations.setdefault(pipeline, [])
                targets.extend(name for name in route.send_to if name not in targets)
    return [Assignment(name, tuple(targets)) for name, targets in destinations.items()]
