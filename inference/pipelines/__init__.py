"""Pipelines radnode can run, by the name routes use in the YAML."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry stays importable without torch, for `radnode config check`
    from inference.pipelines.base import Pipeline

__all__ = ["UnknownPipeline", "available", "create"]


class UnknownPipeline(LookupError):
    """A route names a pipeline radnode does not have."""


def _lung_qct() -> Pipeline:
    from inference.pipelines.lung_qct import LungQCT

    return LungQCT()


_FACTORIES: dict[str, Callable[[], Pipeline]] = {"lung-qct": _lung_qct}


def available() -> list[str]:
    """Names of every pipeline this installation can run."""
    return sorted(_FACTORIES)


def create(name: str) -> Pipeline:
    """Build the pipeline called ``name``; raise UnknownPipeline listing the known names."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UnknownPipeline(
            f"unknown pipeline {name!r}; known pipelines: {', '.join(available())}"
        ) from None
    return factory()
