"""Study-level jobs: one pipeline over several series of one study (brain MRI: T1c, T1, T2, FLAIR).

The study is the real brain MR of tests/data/mr_brain_epi_ge written as five series of one study
(four sequences named as a scanner would, and a localizer); FLAIR is stored on a grid twice as
coarse, so putting the series on one grid is exercised, not skipped. The job waits for every
required input, picks each by the preset's SeriesDescription rules, fails naming what is missing
after its wait, and runs end to end (Orthanc → radnode → Orthanc) with the brain-tumor preset's
model: the MONAI BraTS bundle's SegResNet with random weights.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
import torch
import yaml
from pydantic import ValidationError
from pydicom.uid import generate_uid
from sqlalchemy import select

from inference.formats import model_sha256
from inference.labels import load_label_table
from inference.registration import RegistrationError, onto_grid
from inference.volume import Volume, load_series
from node.config import CompletionConfig, PipelineOptions, Route, parse_config
from node.db import Database, Job, JobState, Series
from node.errors import ConfigError
from node.jobs.completion import CompletionWatcher
from node.spool.catalog import record_instance
from node.spool.store import Spool, read_header
from tests.dciodvfy import check_iod
from tests.node_process import RadnodeProcess, radnode_cli
from tests.orthanc import Orthanc

MR_DIR = Path(__file__).parent / "data" / "mr_brain_epi_ge"
PRESET = Path(__file__).resolve().parent.parent / "config" / "presets" / "brain-tumor.yaml"
PIPELINE = "brain-tumor"
# how a scanner might name the sequences; the preset's rules must tell them apart
DESCRIPTIONS = {"T1c": "AX T1 POST GD", "T1": "AX T1 SE", "T2": "AX T2 FSE", "FLAIR": "AX T2 FLAIR",
                "localizer": "3-PLANE LOC"}
RESULT_TIMEOUT_S = 300


def _preset() -> dict[str, Any]:
    return yaml.safe_load(PRESET.read_text(encoding="utf-8"))


def _write_series(folder: Path, name: str, *, coarse: bool = False, tag: str = "") -> Path:
    """The MR series as the sequence ``name`` (a new series of the same study and frame of reference).

    ``coarse``: every second row and column, twice the pixel spacing; the first pixel keeps its
    position, so the grids overlap exactly at the coarse pixels.
    """
    out = folder / f"{name}{tag}"
    out.mkdir(parents=True)
    series_uid = generate_uid(entropy_srcs=["radnode test", name, tag])
    for path in sorted(MR_DIR.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(ds.InstanceNumber)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = DESCRIPTIONS[name]
        ds.SeriesNumber = list(DESCRIPTIONS).index(name) + 1
        if coarse:
            pixels = ds.pixel_array[::2, ::2].copy()
            ds.Rows, ds.Columns = pixels.shape
            ds.PixelSpacing = [float(v) * 2 for v in ds.PixelSpacing]
            ds.PixelData = pixels.tobytes()
        ds.save_as(out / path.name, enforce_file_format=True)
    return out


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Path]:
    """Folder per series: T1c, T1, T2, FLAIR (coarse grid) and a localizer."""
    return {name: _write_series(tmp_path / "study", name, coarse=name == "FLAIR") for name in DESCRIPTIONS}


# --- registration: series of one session on one grid ------------------------------------------------

def test_a_coarser_series_lands_on_the_reference_grid_by_its_patient_coordinates(
    study: dict[str, Path]
) -> None:
    reference = load_series(sorted(study["T1c"].glob("*.dcm")))
    coarse = load_series(sorted(study["FLAIR"].glob("*.dcm")))
    assert coarse.shape == (15, 32, 32) and reference.shape == (15, 64, 64)

    resampled = onto_grid(coarse, reference)

    assert resampled.shape == reference.voxels.shape
    # where the grids coincide the value is the stored one; between them, the mean of the neighbours
    torch.testing.assert_close(resampled[:, :-2:2, :-2:2], coarse.voxels[:, :-1, :-1], atol=0.05, rtol=0)
    between = (coarse.voxels[:, :-1, :-1] + coarse.voxels[:, 1:, :-1]) / 2
    torch.testing.assert_close(resampled[:, 1:-2:2, :-2:2], between, atol=0.05, rtol=0)


def test_series_of_another_frame_of_reference_are_refused_by_name(study: dict[str, Path]) -> None:
    import dataclasses

    reference = load_series(sorted(study["T1c"].glob("*.dcm")))
    other: Volume = dataclasses.replace(load_series(sorted(study["T2"].glob("*.dcm"))),
                                        frame_of_reference_uid="1.2.3.4")
    with pytest.raises(RegistrationError, match=r"frame of reference 1\.2\.3\.4.*no image registration"):
        onto_grid(other, reference)


# --- completion: waiting for the inputs ----------------------------------------------------------------

@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'radnode.db'}")
    database.create_schema()
    return database


def _receive(db: Database, spool: Spool, folder: Path) -> None:
    for path in sorted(folder.glob("*.dcm")):
        data = path.read_bytes()
        header = read_header(data)
        record_instance(db, header, path=spool.write(header, data), size_bytes=len(data),
                        transfer_syntax_uid=str(pydicom.dcmread(path).file_meta.TransferSyntaxUID),
                        calling_ae_title="MRI")


def _age(db: Database, seconds: float) -> None:
    with db.session() as session:
        for series in session.scalars(select(Series)):
            series.last_received_at -= timedelta(seconds=seconds)


def _watcher(db: Database, enqueued: list[int], wait_seconds: float = 1800) -> CompletionWatcher:
    options = PipelineOptions(**{**_preset()["pipelines"][PIPELINE], "wait_seconds": wait_seconds})
    routes = [Route(match={"Modality": "MR"}, pipelines=[PIPELINE], send_to=[])]
    return CompletionWatcher(db, CompletionConfig(quiet_seconds=5), routes, set, enqueued.append,
                             pipelines={PIPELINE: options})


def _series_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


def _jobs(db: Database) -> list[Job]:
    with db.session() as session:
        return list(session.scalars(select(Job)))


def test_study_job_waits_for_every_input_and_then_runs_once_with_each_series_in_its_place(
    db: Database, tmp_path: Path, study: dict[str, Path]
) -> None:
    spool, enqueued = Spool(tmp_path / "spool", 0), []
    watcher = _watcher(db, enqueued)
    for name in ("localizer", "T2", "T1c", "T1"):
        _receive(db, spool, study[name])
    _age(db, 10)
    assert watcher.tick() == []
    (waiting,) = _jobs(db)
    assert waiting.state == JobState.WAITING and waiting.inputs == {}

    _receive(db, spool, study["FLAIR"])
    _age(db, 10)
    assert watcher.tick() == [waiting.id]

    (job,) = _jobs(db)
    assert job.state == JobState.QUEUED
    assert job.inputs == {name: _series_uid(study[name]) for name in ("T1c", "T1", "T2", "FLAIR")}
    assert list(job.inputs) == ["T1c", "T1", "T2", "FLAIR"]  # the model's channel order
    assert watcher.tick() == []


def test_study_job_without_an_input_fails_naming_it_after_the_wait(
    db: Database, tmp_path: Path, study: dict[str, Path]
) -> None:
    spool, enqueued = Spool(tmp_path / "spool", 0), []
    watcher = _watcher(db, enqueued, wait_seconds=60)
    for name in ("T1c", "T1", "FLAIR"):
        _receive(db, spool, study[name])
    _age(db, 10)
    watcher.tick()
    with db.session() as session:
        assert watcher.study_jobs.resolve(session) == []  # still within its wait
        assert session.scalar(select(Job)).state == JobState.WAITING
        assert watcher.study_jobs.resolve(session, session.scalar(select(Job)).created_at
                                          + timedelta(seconds=61)) == []

    (job,) = _jobs(db)
    assert job.state == JobState.FAILED
    assert job.reason.startswith(f"missing input: T2 (no complete series of the study matched "
                                 f"pipelines.{PIPELINE}.inputs within 60 s)")
    assert enqueued == []


def test_a_repeated_sequence_is_taken_from_the_series_completed_last(
    db: Database, tmp_path: Path, study: dict[str, Path]
) -> None:
    spool, enqueued = Spool(tmp_path / "spool", 0), []
    watcher = _watcher(db, enqueued)
    for name in ("T1c", "T1", "T2"):
        _receive(db, spool, study[name])
    _age(db, 10)
    watcher.tick()
    repeat = _write_series(tmp_path / "repeat", "T1c", tag="-repeat")
    _receive(db, spool, repeat)
    _receive(db, spool, study["FLAIR"])
    _age(db, 10)
    watcher.tick()

    (job,) = _jobs(db)
    assert job.inputs["T1c"] == _series_uid(repeat) != _series_uid(study["T1c"])


def test_inputs_are_checked_when_the_configuration_is_read(tmp_path: Path) -> None:
    text = PRESET.read_text(encoding="utf-8")
    first_optional = text.replace("      - name: T1c\n", "      - name: T1c\n        required: false\n")
    with pytest.raises(ConfigError, match=r"pipelines\.brain-tumor\.inputs: the first input \(T1c\) is the "
                                          r"reference grid: it must be required"):
        parse_config(first_optional, base=tmp_path)
    misspelt = r"inputs\.3\.match: 'SeriesDescriptionn' is not a DICOM attribute keyword"
    with pytest.raises(ConfigError, match=r"pipelines\.brain-tumor\." + misspelt):
        parse_config(text.replace("{SeriesDescription: {regex: \"flair\"",
                                  "{SeriesDescriptionn: {regex: \"flair\""), base=tmp_path)
    with pytest.raises(ValidationError, match="input names must differ: T1 repeated"):
        PipelineOptions(model="m", inputs=[{"name": "T1"}, {"name": "T1"}])


# --- end to end: the brain-tumor preset, Orthanc → radnode → Orthanc ------------------------------------

PATCH = [64, 64, 16]  # the preset's 240 × 240 × 160 at 1 mm would be minutes per study on 2 CPU cores


def _brats_bundle(root: Path) -> Path:
    """The Model Zoo's brats_mri_segmentation folder: its inference config, metadata and random weights
    of its network (SegResNet, 4 channels in, 3 sigmoid channels out)."""
    from monai.networks.nets import SegResNet

    network = {"blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16, "in_channels": 4,
               "out_channels": 3, "dropout_prob": 0.2}
    bundle = root / "brats_mri_segmentation"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "SegResNet", **network},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [240, 240, 160], "sw_batch_size": 1,
                    "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        ]},
    }
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    metadata = {"version": "0.3.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 4,
                             "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
        "outputs": {"pred": {"type": "image", "num_channels": 3,
                             "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}},
    }}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    torch.manual_seed(0)
    torch.save(SegResNet(**network).state_dict(), bundle / "models" / "model.pt")
    return bundle


def _preset_sections(bundle: Path) -> dict[str, Any]:
    """The preset's model and pipeline as an admin installs them: the folder and its digest filled in;
    the patch and grid shrunk to fit a CPU test (the series' own spacing, no resampling)."""
    preset = _preset()
    model = preset["models"]["brats"]
    model.update(file=str(bundle), sha256=model_sha256(bundle), backend="torch")
    model["input"].update(patch_size=PATCH, spacing_mm=None)
    return {"models": {"brats": model}, "pipelines": preset["pipelines"]}


@pytest.mark.slow
def test_brain_tumor_study_from_orthanc_comes_back_as_one_seg_on_the_t1c_grid_with_its_regions(
    tmp_path: Path, study: dict[str, Path], orthanc_factory: Callable[..., Orthanc]
) -> None:
    pacs = orthanc_factory()
    node = RadnodeProcess.beside(
        pacs, tmp_path / "radnode",
        routes=[{"match": {"Modality": "MR"}, "pipelines": [PIPELINE], "send_to": ["pacs"]}],
        extra=_preset_sections(_brats_bundle(tmp_path / "models")),
    )
    study_uid = pydicom.dcmread(next(MR_DIR.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID

    with node:
        for folder in study.values():
            pacs.upload_folder(folder)
        study_id = pacs.send_study("radnode", study_uid)
        start = time.monotonic()
        results = pacs.wait_for_results(study_id, "SEG and SR of brain-tumor in Orthanc", RESULT_TIMEOUT_S)
        status = node.cli("status")
    print(f"study sent → brain-tumor SEG+SR in Orthanc: {time.monotonic() - start:.1f} s")

    assert len(results["SEG"]) == 1, "one study job, not one per series"
    seg_file, sr_file = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg_file.write_bytes(results["SEG"][0])
    sr_file.write_bytes(results["SR"][0])
    seg = pydicom.dcmread(io.BytesIO(results["SEG"][0]))
    assert seg.StudyInstanceUID == study_uid
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == _series_uid(study["T1c"])  # the reference grid
    assert len(referenced.ReferencedInstanceSequence) == 15
    table = {label.name: label for label in load_label_table("brain_tumor").values()}
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert segments, "random weights leave about half the voxels above 0.5: every region is present"
    for name, segment in segments.items():
        scheme, value = table[name].code.split(":")
        coded = segment.SegmentedPropertyTypeCodeSequence[0]
        assert (coded.CodingSchemeDesignator, coded.CodeValue) == (scheme, value)
    check_iod(seg_file).assert_no_errors()
    check_iod(sr_file).assert_no_errors()
    assert status.returncode == 0, status.stderr
    assert PIPELINE in status.stdout and "succeeded" in status.stdout


def test_route_dry_run_says_which_input_a_series_would_be(tmp_path: Path, study: dict[str, Path]) -> None:
    config = tmp_path / "brain.yaml"
    preset = PRESET.read_text(encoding="utf-8")
    config.write_text(preset.replace('BodyPartExamined: {regex: "brain|head", ignore_case: true}', "")
                      .replace("{Modality: MR, }", "{Modality: MR}"), encoding="utf-8")

    routed = radnode_cli("route", "--dry-run", str(study["FLAIR"]), "--config", str(config))

    assert routed.returncode == 0, routed.stderr
    assert f"{PIPELINE} input FLAIR: fits (SeriesDescription is AX T2 FLAIR: ok)" in routed.stdout
    assert (f"{PIPELINE} input T1c: does not fit (SeriesDescription is AX T2 FLAIR, does not match"
            in routed.stdout)
