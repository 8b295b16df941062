"""Named plugins in a fixed order, each given as the object itself or as a ``"module:attr"`` path.

radnode's extension points (:mod:`inference.backends`, :mod:`inference.pipelines`) list their
built-ins as paths, as pydicom lists its pixel decoder plugins, so that naming or listing them
imports nothing heavy (torch, ONNX Runtime, TensorRT): a plugin's module is imported when the
plugin is first used. Adding a plugin is one module plus one :meth:`PluginRegistry.register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, TypeVar, cast

__all__ = ["PluginRegistry"]

T = TypeVar("T")


class PluginRegistry(Generic[T]):
    """Plugins of one kind (``what``, for messages) by name, in the order given (the preference order)."""

    def __init__(self, what: str, builtins: Mapping[str, T | str]) -> None:
        self._what = what
        self._entries: dict[str, T | str] = dict(builtins)

    def register(self, name: str, plugin: T | str, *, before: str | None = None) -> None:
        """Add ``plugin`` (or its ``"module:attr"`` path) as ``name``: last, or just ahead of ``before``."""
        if name in self._entries:
            raise ValueError(f"{self._what} {name!r} is registered already")
        if before is None:
            self._entries[name] = plugin
            return
        if before not in self._entries:
            raise ValueError(f"cannot register {self._what} {name!r} before {before!r}, which is not "
                             f"registered; registered: {', '.join(self._entries)}")
        entries = list(self._entries.items())
        entries.insert(list(self._entries).index(before), (name, plugin))
        self._entries = dict(entries)

    def unregister(self, name: str) -> None:
        """Remove ``name``; KeyError if it is not registered."""
        del self._entries[name]

    def names(self) -> tuple[str, ...]:
        """Every registered name, in order, without importing any plugin."""
        return tuple(self._entries)

    def get(self, name: str) -> T:
        """The plugin registered as ``name``, imported on first use; KeyError if there is none."""
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = cast(T, getattr(importlib.import_module(module), attr))
            self._entries[name] = entry
        return entry
