"""Run PixelMed's validators (Debian ``pixelmed-apps``) in tests: the ones IHE AI Results testing uses.

``DicomSRValidator FILE`` checks an SR's IOD and its content tree against the templates (TID 1500
and what it includes); ``DicomInstanceValidator FILE`` checks the IOD of the few image IODs that
PixelMed describes (Segmentation, the Enhanced and Legacy Converted multi-frames, ...) and says
"IOD (SOP Class) unrecognized" for the others. Each call validates one file in its own JVM (a
second file argument is ignored). A current JDK stops on its XPath limits unless they are lifted.
Without java or the jar, the test is skipped with the reason, never passed silently.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.dciodvfy import ValidatorReport

__all__ = ["PIXELMED_JAR", "UNRECOGNIZED", "validate_instance", "validate_sr"]

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
#: What DicomInstanceValidator prints for an IOD it has no description of.
UNRECOGNIZED = "IOD (SOP Class) unrecognized"
_XPATH_LIMITS_OFF = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
_TIMEOUT_SECONDS = 180


def _run(validator: str, path: Path) -> ValidatorReport:
    java = shutil.which("java")
    if java is None or not PIXELMED_JAR.is_file():
        pytest.skip(f"java and {PIXELMED_JAR} are needed (Debian: pixelmed-apps)")
    completed = subprocess.run(
        [java, *_XPATH_LIMITS_OFF, "-cp", str(PIXELMED_JAR), f"com.pixelmed.validate.{validator}",
         str(path)],
        capture_output=True, text=True, timeout=_TIMEOUT_SECONDS, check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"{validator} failed on {path}:\n{output}"
    return ValidatorReport.parse(output)


def validate_sr(path: Path) -> ValidatorReport:
    """DicomSRValidator: the SR's IOD, then its content tree against the templates."""
    return _run("DicomSRValidator", path)


def validate_instance(path: Path) -> ValidatorReport:
    """DicomInstanceValidator: the IOD, for the IODs PixelMed describes."""
    return _run("DicomInstanceValidator", path)
