"""Bad input never crashes the node: a corpus of broken files and series, and a bounded fuzz run.

Every broken data set sent to the listener gets a failure status (and leaves nothing behind) on
an association that goes on serving; every stored series that cannot be a volume ends its job
failed or not applicable with a reason. The fuzz run (hypothesis, fixed seed and example count)
mutates real files and feeds them to the receive path (``read_header`` + ``Spool.write``) and to
``load_series``; it counts cases and crashes (anything but radnode's own refusal errors).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pynetdicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from inference.errors import VolumeError
from inference.volume import load_series
from node.config import CompletionConfig, Route, parse_config
from node.db import Database, Job, JobState
from node.dimse import StoreStatus
from node.errors import InvalidInstance
from node.jobs.completion import CompletionWatcher
from node.jobs.runner import JobRunner
from node.spool.store import Spool, read_header
from tests.corpus import send_datasets, synthetic_series
from tests.corpus.bad import file_cases, real_slice, series_cases, wire_cases
from tests.dcmtk import storescu
from tests.inprocess_node import AE_TITLE, InProcessNode
from tests.node_process import RadnodeProcess

FUZZ_HEADER_EXAMPLES = 1000
FUZZ_VOLUME_EXAMPLES = 300
LONG_SERIES_SLICES = 5000


@pytest.fixture
def node(tmp_path: Path) -> Iterator[InProcessNode]:
    with InProcessNode(tmp_path / "node") as node:
        yield node


def _part10(meta_from: pydicom.Dataset, body: bytes) -> bytes:
    """Preamble + file meta (Explicit VR LE) + ``body``: a file pynetdicom sends as it is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = meta_from.SOPClassUID
    meta.MediaStorageSOPInstanceUID = meta_from.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    header = pydicom.Dataset()
    header.file_meta = meta
    header.preamble = b"\0" * 128
    header.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue() + body


# pydicom warns about what it reads from broken input; a node runs with warnings as warnings
_PYDICOM_WARNINGS_AS_IN_PRODUCTION = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")


@_PYDICOM_WARNINGS_AS_IN_PRODUCTION
def test_every_broken_data_set_gets_a_failure_status_and_the_association_goes_on(
    node: InProcessNode, chest_ct_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # bytes as they are
    template = real_slice(sorted(chest_ct_dir.glob("*.dcm"))[0])
    ae = AE(ae_title="BROKEN_CT")
    ae.add_requested_context(template.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    statuses: dict[str, int] = {}
    for name, body in wire_cases(template).items():
        path = tmp_path / "case.dcm"
        path.write_bytes(_part10(template, body))
        answer = assoc.send_c_store(path)
        statuses[name] = int(answer.Status) if "Status" in answer else -1
    still_serving = assoc.send_c_store(template).Status
    assoc.release()
    print("wire cases:", {name: f"0x{code:04X}" for name, code in statuses.items()})
    refused = {name for name, code in statuses.items() if code in (
        StoreStatus.CANNOT_DECODE, StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)}
    assert refused == set(statuses), statuses
    assert still_serving == StoreStatus.SUCCESS
    stored = node.stored_uids()
    assert stored <= {str(template.SOPInstanceUID)}
    assert not [p for p in node.spool.root.rglob("*") if p.is_file() and p.suffix != ".dcm"]


# Pixel data cut short, or declaring more bytes than follow: the listener refuses both (it walks
# the element lengths, never the pixels); a file that reaches the loader another way fails there.
_PIXEL_CASES = {"truncated mid-pixel-data", "huge declared pixel length"}


def _run_jobs(db: Database, spool: Path, tmp_path: Path) -> dict[str, tuple[JobState, str]]:
    """Complete every received series, run its lung-qct job here, return {series UID: outcome}."""
    config = parse_config(
        f"storage: {{path: {spool}}}\ndatabase: {{url: '{db.url}'}}\n"
        "broker: {url: 'sqla+sqlite:///unused.db'}\n",
        base=tmp_path,
    )
    queued: list[int] = []
    routes = [Route(pipelines=["lung-qct"])]
    CompletionWatcher(db, CompletionConfig(quiet_seconds=0), routes, set, queued.append).tick()
    runner = JobRunner(config, db, torch.device("cpu"))
    for job_id in queued:
        runner.run(job_id)
    with db.session() as session:
        jobs = session.scalars(select(Job)).all()
        return {job.series.series_instance_uid: (job.state, job.reason) for job in jobs}


@_PYDICOM_WARNINGS_AS_IN_PRODUCTION
def test_series_that_cannot_be_one_volume_end_their_jobs_with_a_reason(
    node: InProcessNode, chest_ct_dir: Path, tmp_path: Path
) -> None:
    cases = series_cases()
    real = real_slice(sorted(chest_ct_dir.glob("*.dcm"))[0])
    pixel_cases = {name: body for name, body in wire_cases(real).items() if name in _PIXEL_CASES}
    path = tmp_path / "wire-case.dcm"
    path.write_bytes(_part10(real, pixel_cases["truncated mid-pixel-data"]))
    with pytest.raises(VolumeError, match="less than expected"):
        load_series([path])
    # an undefined-looking length over data that is all there: pydicom reads to the end, as it should
    path.write_bytes(_part10(real, pixel_cases["huge declared pixel length"]))
    assert load_series([path]).shape == (1, real.Rows, real.Columns)
    for name, data in file_cases(sorted(chest_ct_dir.glob("*.dcm"))[0]).items():
        path = tmp_path / "file-case.dcm"
        path.write_bytes(data)
        with pytest.raises(VolumeError):
            load_series([path])
        if name != "no preamble":  # read_header reads what a listener got: a data set, no preamble
            with pytest.raises(InvalidInstance):
                read_header(data)
    series_by_uid = {}
    for name, datasets in cases.items():
        assert set(send_datasets(node.port, datasets)) == {StoreStatus.SUCCESS}, name
        series_by_uid[str(datasets[0].SeriesInstanceUID)] = name
    outcomes = _run_jobs(node.db, node.spool.root, tmp_path)
    named = {series_by_uid[uid]: outcome for uid, outcome in outcomes.items()}
    print("series cases:", {name: f"{state.value}: {reason[:70]}" for name, (state, reason) in named.items()})
    assert named.keys() == cases.keys()
    for name, (state, reason) in named.items():
        assert state in (JobState.FAILED, JobState.NOT_APPLICABLE), name
        assert reason and not reason.startswith("internal error"), f"{name}: {reason}"


@pytest.mark.slow
def test_a_5000_slice_series_is_received_loaded_and_ends_its_job_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    for index, ds in enumerate(synthetic_series(LONG_SERIES_SLICES, rows=4, columns=4)):
        ds.save_as(folder / f"{index:05d}.dcm", enforce_file_format=True)
    node = RadnodeProcess(tmp_path / "radnode", destinations={}, routes=[], with_worker=False)
    with node:  # a separate listener process and DCMTK as the sender: one association, 5,000 stores
        sent = storescu("127.0.0.1", node.port, node.ae_title, [folder], timeout=600)
        assert sent.returncode == 0, sent.stderr
    spool = node.workdir / "var" / "spool"
    paths = sorted(spool.rglob("*.dcm"))
    assert len(paths) == LONG_SERIES_SLICES
    volume = load_series(paths)
    assert volume.shape == (LONG_SERIES_SLICES, 4, 4)
    assert volume.spacing[0] == pytest.approx(1.0)
    db = Database(f"sqlite:///{node.workdir / 'var' / 'radnode.db'}")
    ((state, reason),) = _run_jobs(db, spool, tmp_path).values()
    db.dispose()
    assert state is JobState.NOT_APPLICABLE and reason, reason  # too small to hold lungs, not a crash


# -- bounded fuzzing ---------------------------------------------------------------------------

_MUTATION = st.tuples(
    st.sampled_from(["set", "insert", "delete"]), st.integers(0, 2**20), st.integers(0, 255)
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]], cut: int | None) -> bytes:
    buffer = bytearray(data)
    for kind, position, value in mutations:
        at = position % (len(buffer) + 1)
        if kind == "set" and at < len(buffer):
            buffer[at] = value
        elif kind == "insert":
            buffer[at:at] = bytes([value]) * (1 + value % 8)
        elif kind == "delete":
            del buffer[at : at + 1 + value % 8]
    return bytes(buffer[: cut % (len(buffer) + 1)] if cut is not None else buffer)


def _seeds(chest_ct_dir: Path) -> list[bytes]:
    """Real files to mutate: a chest CT slice cut to 16x16 pixels, and a synthetic 8x8 slice."""
    real = real_slice(sorted(chest_ct_dir.glob("*.dcm"))[0])
    real.Rows = real.Columns = 16
    real.PixelData = real.PixelData[: 16 * 16 * 2]
    seeds = []
    for ds in (real, _fixed_uids(synthetic_series(1))[0]):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        seeds.append(buffer.getvalue())
    return seeds


def _fixed_uids(series: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Fixed UIDs, so the seeds' bytes (and so every fuzz case) are the same on every run."""
    for index, ds in enumerate(series):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.7.1", "1.2.826.0.1.7.2"
        ds.FrameOfReferenceUID = "1.2.826.0.1.7.3"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.7.4.{index + 1}"
    return series


def _run_case(target: Callable[[], object], refusals: tuple[type[Exception], ...],
              tally: Counter[str], crashes: list[str]) -> None:
    try:
        target()
    except refusals:
        tally["refused"] += 1
    except Exception as exc:  # a crash: counted and reported, the run goes on
        crashes.append(f"{type(exc).__name__}: {exc}")
        tally["crashed"] += 1
    else:
        tally["accepted"] += 1


@_PYDICOM_WARNINGS_AS_IN_PRODUCTION
def test_fuzzed_files_never_crash_the_receive_path_or_the_volume_loader(
    chest_ct_dir: Path, tmp_path: Path
) -> None:
    seeds = _seeds(chest_ct_dir)
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    header_tally: Counter[str] = Counter()
    volume_tally: Counter[str] = Counter()
    crashes: list[str] = []
    neighbours = _fixed_uids(synthetic_series(3))
    series_dir = tmp_path / "series"
    series_dir.mkdir()
    for index, ds in enumerate(neighbours[1:]):
        ds.save_as(series_dir / f"good{index}.dcm", enforce_file_format=True)
    buffer = io.BytesIO()
    neighbours[0].save_as(buffer, enforce_file_format=True)
    volume_seed = buffer.getvalue()

    common = settings(derandomize=True, database=None, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

    @settings(common, max_examples=FUZZ_HEADER_EXAMPLES)
    @given(seed=st.sampled_from(range(len(seeds))), mutations=st.lists(_MUTATION, max_size=6),
           cut=st.none() | st.integers(0, 2**20))
    def receive(seed: int, mutations: list[tuple[str, int, int]], cut: int | None) -> None:
        data = _mutate(seeds[seed], mutations, cut)
        _run_case(lambda: spool.write(read_header(data), data), (InvalidInstance,), header_tally, crashes)

    @settings(common, max_examples=FUZZ_VOLUME_EXAMPLES)
    @given(mutations=st.lists(_MUTATION, min_size=1, max_size=6), cut=st.none() | st.integers(0, 4096))
    def load(mutations: list[tuple[str, int, int]], cut: int | None) -> None:
        (series_dir / "fuzzed.dcm").write_bytes(_mutate(volume_seed, mutations, cut))
        paths = sorted(series_dir.glob("*.dcm"))
        _run_case(lambda: load_series(paths), (VolumeError,), volume_tally, crashes)

    receive()
    load()
    print(f"fuzz receive path: {sum(header_tally.values())} cases {dict(header_tally)}; "
          f"volume loader: {sum(volume_tally.values())} cases {dict(volume_tally)}")
    assert sum(header_tally.values()) >= FUZZ_HEADER_EXAMPLES // 2
    assert not crashes, "\n".join(sorted(set(crashes))[:20])
    assert not [p for p in spool.root.rglob("*") if p.is_file() and p.suffix != ".dcm"]
