"""Run Python code in a fresh interpreter: what one test imported cannot hide what another checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_fresh(code: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in the repository root, its output captured as text."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)
