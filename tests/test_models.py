"""Models declared in the YAML: pinned files, clear errors, a warm registry, and a segmentation
pipeline defined by configuration alone, run on the real chest CT and through the job runner."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from sqlalchemy import select

from dicom_sr.codes import Code
from dicom_sr.findings import Findings
from inference.errors import ModelChecksumMismatch, ModelError, ModelFileMissing, ModelFormatError
from inference.formats import file_sha256, model_sha256, open_model, tree_sha256
from inference.model_config import shipped_weights_dir
from inference.pipelines import create
from inference.registry import ModelRegistry
from inference.volume import Volume, load_series
from node.config import Config, parse_config
from node.db import Database, Job, JobState, Result, Series
from node.errors import ConfigError
from node.jobs.runner import JobRunner
from node.ops.cli import main
from node.spool.catalog import record_instance
from node.spool.store import read_header
from tests.dicom_files import dicom_files_under
from tests.tiny_models import model_config, save_torchscript, tiny_segmenter

CPU = torch.device("cpu")
CHEST_CT = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"


def _yaml(sha256: str, file: str = "tiny.ts", model: str = "tiny") -> str:
    """A node configuration with one TorchScript model and a pipeline ``tiny-seg`` that runs it."""
    return f"""\
storage: {{path: spool, results_path: results}}
database: {{url: "sqlite:///radnode.db"}}
broker: {{url: "sqla+sqlite:///broker.db"}}
models:
  tiny:
    file: {file}
    format: torchscript
    sha256: {sha256}
    backend: torch
    input:
      patch_size: [16, 64, 64]
      spacing_mm: [5, 4, 4]
      overlap: 0.25
      batch_size: 2
      normalization: {{kind: window, low: -1000, high: 400}}
    labels:
      1: {{name: Left lung, code: "SCT:39607008", meaning: Lung, colour: [64, 160, 255],
          modifier: "SCT:7771000", modifier_meaning: Left}}
      2: {{name: Soft tissue, code: "SCT:87784001", meaning: Soft tissue, colour: [255, 170, 0],
          category: "SCT:85756007", category_meaning: Tissue}}
pipelines:
  tiny-seg: {{model: {model}}}
routes:
  - match: {{Modality: CT}}
    pipelines: [tiny-seg]
"""


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    return save_torchscript(tiny_segmenter(), tmp_path / "tiny.ts")


@pytest.fixture
def config(tiny_file: Path) -> Config:
    return parse_config(_yaml(file_sha256(tiny_file)), base=tiny_file.parent)


@pytest.fixture(scope="module")
def chest() -> Volume:
    return load_series(sorted(CHEST_CT.glob("*.dcm")))


# --- files, digests and their errors -----------------------------------------------------------

def test_folder_digest_covers_every_file_by_relative_path(tmp_path: Path) -> None:
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    (tmp_path / "bundle" / "models" / "model.pt").write_bytes(b"weights")
    (tmp_path / "bundle" / "metadata.json").write_text("{}")
    lines = "".join(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n"
                    for rel, data in (("metadata.json", b"{}"), ("models/model.pt", b"weights")))

    digest = tree_sha256(tmp_path / "bundle")

    assert digest == model_sha256(tmp_path / "bundle") == hashlib.sha256(lines.encode()).hexdigest()
    (tmp_path / "bundle" / "models" / "model.pt").rename(tmp_path / "bundle" / "models" / "other.pt")
    assert model_sha256(tmp_path / "bundle") != digest  # a renamed file is a different model


def test_checksum_mismatch_names_the_file_and_both_digests(tiny_file: Path) -> None:
    pinned = "0" * 63 + "1"

    with pytest.raises(ModelChecksumMismatch) as caught:
        open_model("tiny", model_config(tiny_file, sha256=pinned))

    message = str(caught.value)
    assert str(tiny_file) in message and pinned in message and file_sha256(tiny_file) in message
    assert "models.tiny.sha256" in message


def test_missing_model_file_names_the_file_and_the_yaml_key(tiny_file: Path) -> None:
    config = model_config(tiny_file).model_copy(update={"file": tiny_file.with_name("gone.ts")})

    with pytest.raises(ModelFileMissing, match=r"gone\.ts does not exist; fix models\.tiny\.file"):
        open_model("tiny", config)


def test_a_file_that_is_not_torchscript_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.ts"
    path.write_text("not a network")

    with pytest.raises(ModelFormatError, match=r"notes\.ts is not a TorchScript file"):
        open_model("tiny", model_config(path))


def test_an_invalid_onnx_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage")

    with pytest.raises(ModelFormatError, match=r"model\.onnx is not a valid ONNX model"):
        open_model("tiny", model_config(path, "onnx"))


def test_model_hash_command_prints_the_digest_the_yaml_pins(tiny_file: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "hash", str(tiny_file)]) == 0
    assert capsys.readouterr().out.strip() == file_sha256(tiny_file)


def test_model_check_command_opens_every_model_and_reports_each(
    tiny_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tiny_file.with_name("radnode.yaml")
    path.write_text(_yaml(file_sha256(tiny_file)))
    assert main(["model", "check", "--config", str(path)]) == 0
    assert capsys.readouterr().out == "ok tiny\n"

    path.write_text(_yaml("b" * 64))
    assert main(["model", "check", "--config", str(path)]) == 1
    assert capsys.readouterr().out.startswith(f"FAILED tiny: model 'tiny': {tiny_file} has SHA-256")


# --- configuration ---------------------------------------------------------------------------

def test_model_files_resolve_against_the_config_folder_and_the_shipped_weights(tmp_path: Path) -> None:
    relative = parse_config(_yaml("a" * 64, file="models/tiny.ts"), base=tmp_path)
    shipped = parse_config(_yaml("a" * 64, file="radnode:lung_unet.ts"), base=tmp_path)

    assert relative.models["tiny"].file == tmp_path / "models" / "tiny.ts"
    assert shipped.models["tiny"].file == shipped_weights_dir() / "lung_unet.ts"
    assert relative.pipeline_names() == ["ct-denoise", "lung-qct", "tiny-seg"]
    assert relative.backend_cache_dir == tmp_path / "backend-cache"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (_yaml("a" * 64, model="tiny2"), "pipelines.tiny-seg.model: unknown model(s) tiny2 (models: tiny)"),
        (_yaml("not-hex"), "models.tiny.sha256: sha256 must be 64 hexadecimal digits"),
        (_yaml("a" * 64).replace("tiny-seg: {model: tiny}", "lung-qct: {model: tiny}"),
         "pipelines.lung-qct.model: 'lung-qct' is a built-in pipeline"),
        (_yaml("a" * 64).replace("tiny-seg: {model: tiny}", "tiny-seg: {}"),
         "pipelines: options for unknown pipeline(s) tiny-seg"),
        (_yaml("a" * 64).replace("      batch_size: 2\n", "      batch_size: 2\n      stride: 3\n"),
         "models.tiny.input.stride: unknown key"),
    ],
)
def test_model_config_errors_name_the_key(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base=tmp_path, source="radnode.yaml")

    assert any(problem in line for line in caught.value.problems), caught.value.problems


# --- registry --------------------------------------------------------------------------------

def test_registry_keeps_models_warm_and_drops_the_least_recently_used(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = {"first": config.models["tiny"], "second": config.models["tiny"]}
    registry = ModelRegistry(models, CPU, tmp_path / "cache", max_loaded=1)
    caplog.set_level(logging.INFO, logger="radnode.inference")

    first = registry.get("first")
    assert registry.get("first") is first  # warm: not opened again
    registry.get("second")

    assert registry.loaded() == ["second"]
    loads = [r.getMessage() for r in caplog.records if "loaded in" in r.getMessage()]
    assert len(loads) == 2 and "on torch on cpu (fp32)" in loads[0]
    assert "model first unloaded" in caplog.text
    with pytest.raises(ModelError, match=r"unknown model 'third' \(models: first, second\)"):
        registry.get("third")


# --- the pipeline on a real series ------------------------------------------------------------

@pytest.fixture
def findings(config: Config, chest: Volume, tmp_path: Path) -> Findings:
    registry = ModelRegistry(config.models, CPU, config.backend_cache_dir)
    return create("tiny-seg", "tiny", registry).run(chest, CPU)


def test_segments_carry_the_yaml_codes_and_colours_on_the_source_grid(
    findings: Findings, chest: Volume, config: Config
) -> None:
    labels = {label.name: label for label in config.models["tiny"].labels.values()}

    assert findings.segments, "the random network labels at least one class on the chest CT"
    for segment in findings.segments:
        label = labels[segment.label]
        assert segment.shape == chest.shape
        assert all(n <= whole for n, whole in zip(segment.mask.shape, chest.shape, strict=True))  # its box
        assert f"{segment.property_type.scheme}:{segment.property_type.value}" == label.code
        assert f"{segment.category.scheme}:{segment.category.value}" == label.category
        assert segment.color_rgb == label.colour
    masks = np.stack([segment.full_mask() for segment in findings.segments])
    assert int(masks.sum(0).max()) == 1  # one label per voxel
    assert findings.algorithm.model_sha256 == config.models["tiny"].sha256
    assert findings.algorithm.version == config.models["tiny"].sha256[:12]


def test_a_laterality_modifier_reaches_the_segment_and_its_finding_site(findings: Findings) -> None:
    (index,) = [i for i, segment in enumerate(findings.segments) if segment.label == "Left lung"]
    (group,) = [g for g in findings.groups if g.segment == index]
    left = Code("7771000", "SCT", "Left")

    assert findings.segments[index].property_modifier == left
    assert (group.finding_site, group.finding_site_laterality) == (Code("39607008", "SCT", "Lung"), left)


def test_each_segment_has_its_volume_and_mean_hu(findings: Findings, chest: Volume) -> None:
    voxel_ml = chest.voxel_volume_mm3 / 1000
    hu = chest.voxels.numpy()

    for index, segment in enumerate(findings.segments):
        (group,) = [g for g in findings.groups if g.segment == index]
        volume, mean_hu = group.measurements
        assert volume.value == pytest.approx(segment.mask.sum() * voxel_ml)
        assert mean_hu.value == pytest.approx(float(hu[segment.full_mask()].astype(np.float64).mean()))


def test_probabilities_come_back_on_the_source_grid_when_asked(config: Config, chest: Volume) -> None:
    registry = ModelRegistry(config.models, CPU, config.backend_cache_dir)

    findings = create("tiny-seg", "tiny", registry, probabilities=True).run(chest, CPU)

    for segment in findings.segments:
        assert segment.probability is not None and segment.probability.shape == chest.shape
        assert segment.probability[segment.mask].mean() > segment.probability[~segment.mask].mean()


# --- through the job runner ---------------------------------------------------------------------

def _queued_job(config: Config, pipeline: str) -> tuple[Database, int]:
    db = Database(config.database.url)
    db.create_schema()
    for path in dicom_files_under(CHEST_CT):
        record_instance(db, read_header(path.read_bytes()), path=path, size_bytes=path.stat().st_size,
                        transfer_syntax_uid="1.2.840.10008.1.2", calling_ae_title="TEST")
    with db.session() as session:
        job = Job(series=session.scalars(select(Series)).one(), pipeline=pipeline, revision=1,
                  destinations=[])
        session.add(job)
        session.flush()
        return db, job.id


def test_job_runs_a_yaml_defined_pipeline_and_writes_its_fractional_seg(tiny_file: Path) -> None:
    text = _yaml(file_sha256(tiny_file)).replace("{model: tiny}", "{model: tiny, seg_type: fractional}")
    config = parse_config(text, base=tiny_file.parent)
    db, job_id = _queued_job(config, "tiny-seg")

    JobRunner(config, db, CPU).run(job_id)

    with db.session() as session:
        job = session.get(Job, job_id)
        assert (job.state, job.pipeline_version) == (JobState.SUCCEEDED, config.models["tiny"].sha256[:12])
        (seg_path,) = session.scalars(select(Result.path).where(Result.job_id == job_id,
                                                                 Result.kind == "seg"))
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    assert seg.SegmentationType == "FRACTIONAL"
    codes = {s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence}
    assert codes <= {"39607008", "87784001"} and codes
    db.dispose()


def test_a_replaced_model_file_fails_the_job_with_the_checksum_message(config: Config,
                                                                       tiny_file: Path) -> None:
    save_torchscript(tiny_segmenter(seed=9), tiny_file)  # someone swapped the file
    db, job_id = _queued_job(config, "tiny-seg")

    JobRunner(config, db, CPU).run(job_id)

    with db.session() as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.FAILED
        assert job.reason.startswith(f"model 'tiny': {tiny_file} has SHA-256 {file_sha256(tiny_file)}")
    db.dispose()
