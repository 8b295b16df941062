"""Run dicom3tools' ``dciodvfy`` (IOD validator) and ``dcentvfy`` (entity consistency) in tests.

``dciodvfy FILE`` prints one finding per line on stderr, each starting with ``Error`` or
``Warning``; the exit status does not tell them apart, so the lines are parsed. Tests fail on any
Error line and print the warnings. Without dicom3tools installed, the test is skipped with the
reason, never passed silently.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["ValidatorReport", "check_entities", "check_iod"]

_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class ValidatorReport:
    """What a dicom3tools validator said about one or more files."""

    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    output: str

    @classmethod
    def parse(cls, output: str) -> ValidatorReport:
        """The Error and Warning lines of a validator's output (dicom3tools and PixelMed alike)."""
        lines = [line.strip() for line in output.splitlines()]
        return cls(
            errors=tuple(line for line in lines if line.startswith("Error")),
            warnings=tuple(line for line in lines if line.startswith("Warning")),
            output=output,
        )

    def assert_no_errors(self) -> None:
        """Fail the test on any Error line; print the warnings so ``pytest -s``/``-rA`` shows them."""
        for warning in self.warnings:
            print(warning)
        assert not self.errors, "dicom3tools reported errors:\n" + "\n".join(self.errors)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (dicom3tools) is not installed; install dicom3tools to validate DICOM output")
    return path


def _run(tool: str, paths: list[Path]) -> ValidatorReport:
    completed = subprocess.run(
        [_tool(tool), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_SECONDS,
        check=False,
    )
    output = completed.stdout + completed.stderr
    return ValidatorReport.parse(output)


def check_iod(path: Path) -> ValidatorReport:
    """Validate one file against its IOD (modules, attribute types, VRs, defined terms)."""
    return _run("dciodvfy", [path])


def check_entities(paths: list[Path]) -> ValidatorReport:
    """Check that files of one study agree on Patient / Study / Series / Frame of Reference."""
    return _run("dcentvfy", paths)
