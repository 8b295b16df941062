"""Routing: which pipelines a completed series goes to, and where their results are sent.

Rules come from the YAML ``routes`` list (``node.config.Route``). A rule matches when every
condition of its ``match`` holds for the series (the header of one of its instances) and the
association that sent it (``calling_ae_title``, ``called_ae_title``). Every matching rule adds
its pipelines, and the destinations of a pipeline are the union over the rules that named it;
a matching ``exclude`` rule removes its pipelines (all, when it names none), whatever the order.
:func:`explain` says, rule by rule, why: ``radnode route --dry-run`` prints it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.config import ASSOCIATION_KEYS, Condition, PipelineOptions, Route

__all__ = ["Assignment", "RuleOutcome", "SeriesFacts", "assign", "describe", "evaluate", "explain"]


@dataclass(frozen=True)
class SeriesFacts:
    """What rules match against: one instance's header and the association that sent it."""

    header: Dataset
    calling_ae_title: str = ""
    called_ae_title: str = ""

    def values(self, key: str) -> list[str]:
        """The values of ``key`` as stripped text (empty when absent or empty)."""
        if key in ASSOCIATION_KEYS:
            value: object = getattr(self, key)
        else:
            value = self.header.get(key)
        if isinstance(value, MultiValue | list | tuple):
            texts = [str(item).strip() for item in value]
        else:
            texts = [] if value is None else [str(value).strip()]
        return [text for text in texts if text]


@dataclass(frozen=True)
class Assignment:
    """One pipeline to run on a series, and the destinations of its results."""

    pipeline: str
    destinations: tuple[str, ...]


@dataclass(frozen=True)
class RuleOutcome:
    """One rule applied to one series: whether it matched, and each condition's verdict."""

    index: int
    route: Route
    matched: bool
    reasons: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"routes[{self.index}]" + (f" {self.route.name!r}" if self.route.name else "")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _same(actual: str, expected: str | int | float, ignore_case: bool) -> bool:
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        number = _number(actual)
        return number is not None and number == float(expected)
    if ignore_case and isinstance(expected, str):  # a bool (never one after validation) equals no text
        return actual.casefold() == expected.casefold()
    return actual == expected


def _check(condition: Condition, values: list[str]) -> tuple[bool, str]:
    """Whether ``values`` (an attribute's) satisfy ``condition``, and why, in words."""
    shown = "absent" if not values else "\\".join(values)
    if condition.present is not None and bool(values) != condition.present:
        return False, f"is {shown}, must be {'present' if condition.present else 'absent'}"
    if condition.equals is not None and not any(
        _same(value, expected, condition.ignore_case) for value in values for expected in condition.equals
    ):
        accepted = ", ".join(str(item) for item in condition.equals)
        return False, f"is {shown}, not one of {accepted}"
    if condition.regex is not None:
        pattern = re.compile(condition.regex, re.IGNORECASE if condition.ignore_case else 0)
        if not any(pattern.search(value) for value in values):
            return False, f"is {shown}, does not match /{condition.regex}/"
    if condition.min is not None or condition.max is not None:
        low = float("-inf") if condition.min is None else condition.min
        high = float("inf") if condition.max is None else condition.max
        numbers = [n for n in map(_number, values) if n is not None]
        if not any(low <= n <= high for n in numbers):
            return False, f"is {shown}, not in [{low:g}, {high:g}]"
    return True, f"is {shown}: ok"


def evaluate(match: Mapping[str, Condition], facts: SeriesFacts) -> tuple[bool, tuple[str, ...]]:
    """Whether every condition of ``match`` holds for the series, and each condition's verdict."""
    verdicts = [(key, *_check(condition, facts.values(key))) for key, condition in match.items()]
    reasons = tuple(f"{key} {why}" for key, _, why in verdicts) or ("no conditions: matches all",)
    return all(ok for _, ok, _ in verdicts), reasons


def explain(routes: Sequence[Route], facts: SeriesFacts) -> list[RuleOutcome]:
    """Every rule applied to the series, in order: matched or not, and why."""
    return [RuleOutcome(index, route, *evaluate(route.match, facts)) for index, route in enumerate(routes)]


def assign(routes: Sequence[Route], facts: SeriesFacts) -> list[Assignment]:
    """The pipelines a series gets, each with the destinations of its results."""
    outcomes = [outcome for outcome in explain(routes, facts) if outcome.matched]
    excluded: set[str] = set()
    for outcome in outcomes:
        if outcome.route.exclude:
            excluded.update(outcome.route.pipelines or {"*"})
    destinations: dict[str, list[str]] = {}
    for outcome in outcomes:
        if outcome.route.exclude or "*" in excluded:
            continue
        for pipeline in outcome.route.pipelines:
            if pipeline in excluded:
                continue
            targets = destinations.setdefault(pipeline, [])
            targets.extend(name for name in outcome.route.send_to if name not in targets)
    return [Assignment(name, tuple(targets)) for name, targets in destinations.items()]


def describe(routes: Sequence[Route], facts: SeriesFacts,
             pipelines: Mapping[str, PipelineOptions] | None = None) -> str:
    """What ``radnode route --dry-run`` prints: each rule's verdict and why, then the result, and for
    each study-level pipeline among ``pipelines`` which of its inputs the series would be."""
    lines = []
    for outcome in explain(routes, facts):
        if outcome.route.exclude:
            effect = f"excludes {', '.join(outcome.route.pipelines) or 'every pipeline'}"
        else:
            effect = f"adds {', '.join(outcome.route.pipelines)}"
        lines.append(f"  {outcome.label}: " + (f"MATCHED, {effect}" if outcome.matched else "no match"))
        lines.extend(f"      {reason}" for reason in outcome.reasons)
    assignments = assign(routes, facts)
    lines.append("  pipelines: " + ("; ".join(
        f"{a.pipeline} -> {', '.join(a.destinations) or 'no destination'}" for a in assignments
    ) or "none"))
    for assignment in assignments:
        options = (pipelines or {}).get(assignment.pipeline)
        for item in options.inputs if options is not None else ():
            matched, reasons = evaluate(item.match, facts)
            lines.append(f"  {assignment.pipeline} input {item.name}: "
                         + ("fits" if matched else "does not fit") + f" ({'; '.join(reasons)})")
    return "\n".join(lines)
