"""Shared fixtures. Reusable harness code lives in tests/orthanc.py, tests/dcmtk.py, tests/ports.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.orthanc import Orthanc
from tests.result_objects import Written, write_corpus

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


@pytest.fixture(scope="session")
def result_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Written, ...]:
    """Every object of tests/result_objects.py, written once for the session (once per xdist worker)
    and read, never changed, by the validators', dcmjs's and the viewer's tests."""
    return tuple(write_corpus(tmp_path_factory.mktemp("corpus")))


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., Orthanc]) -> Orthanc:
    """A running Orthanc with AE title ORTHANC and no modalities (add them with ``add_modality``)."""
    return orthanc_factory()


#: The modules that take longest (minutes each: a viewer session, every scanner layout, the whole-body
#: presets, a JVM per object …), run first. With pytest-xdist's ``--dist loadfile`` (scripts/test.sh)
#: each module runs whole on one worker, in collection order: started last, one of them would be the
#: run's tail while the other workers sit idle.
LONGEST_FIRST = (
    "test_viewer.py",
    "test_scanner_shapes.py",
    "test_wholebody_presets.py",
    "test_end_to_end.py",
    "test_pixelmed.py",
    "test_scale_out.py",
    "test_faults.py",
    "test_lung_unet.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order modules longest first (the rest as collected); tests within a module keep their order."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
