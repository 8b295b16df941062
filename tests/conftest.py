"""Shared fixtures. Reusable harness code lives in tests/orthanc.py, tests/dcmtk.py, tests/ports.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.orthanc import Orthanc

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
SHARED_DATA_DIR = TESTS_DIR.parent.parent / "shared" / "data"


@pytest.fixture
def chest_ct_dir() -> Path:
    """64-slice chest CT (Philips, Implicit VR LE) kept in the repository; see tests/data/README.md."""
    return DATA_DIR / "ct_chest_lungdx_a0001"


@pytest.fixture
def shared_data() -> Path:
    """The larger shared corpus ``../shared/data``; tests using it skip where it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"shared test data not present at {SHARED_DATA_DIR}")
    return SHARED_DATA_DIR


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start Orthanc instances (keyword arguments as for ``Orthanc``); all are stopped at teardown."""
    started: list[Orthanc] = []

    def start(**kwargs: Any) -> Orthanc:
        workdir = tmp_path / f"orthanc-{len(started)}"
        pacs = Orthanc(workdir, **kwargs)
        started.append(pacs)
        return pacs.start()

    yield start
    for pacs in started:
        pacs.stop(wait=False)  # a clean shutdown takes ~3.5 s; reaped at exit (tests.orthanc.reap_stopped)


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., Orthanc]) -> Orthanc:
    """A running Orthanc with AE title ORTHANC and no modalities (add them with ``add_modality``)."""
    return orthanc_factory()
