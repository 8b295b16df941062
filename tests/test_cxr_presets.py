"""The chest X-ray presets (config/presets/cxr-findings.yaml, cxr-report.yaml) on a real chest radiograph.

The models are built here with random weights of the real architectures (a DenseNet-121 with the 14
ChestX-ray14 outputs; the DenseNet-121 + LSTM report generator) and configured by the presets' own
``models:`` entries; the image is a real CR chest PA (lossy JPEG 2000, tests/data/cr_chest_pydicom).
The last test runs both presets end to end: Orthanc → radnode → Orthanc.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
import torch
import yaml
from pydantic import ValidationError
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage

from dicom_sr import codes
from dicom_sr.findings import Findings
from dicom_sr.sr import build_sr
from dicom_sr.text import MACHINE_GENERATED_PREFIX, build_text_sr, classification_statement
from inference.errors import ModelChecksumMismatch, ModelFileMissing, ModelFormatError, NotApplicable
from inference.formats import file_sha256
from inference.labels import load_finding_table
from inference.model_config import ImageInputSpec, ModelConfig
from inference.networks.densenet2d import densenet121
from inference.networks.report_generator import ReportGenerator
from inference.pipelines import create
from inference.radiograph_input import network_input
from inference.registry import ModelRegistry
from inference.report_generators import TokenReader, read_vocabulary
from inference.xray import RadiographSeries, load_radiograph_series
from node.config import ConfigError, load_config
from tests.dciodvfy import check_iod
from tests.node_process import RadnodeProcess
from tests.orthanc import Orthanc, wait_for
from tests.test_label_tables import _verhoeff_valid
from tests.tiny_models import save_torchscript

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "config" / "presets"
CR_FILE = Path(__file__).parent / "data" / "cr_chest_pydicom" / "RG1_J2KI.dcm"
DX_FILE = Path(__file__).parent / "data" / "dx_chest_highdicom" / "dx_image.dcm"
FINDINGS_MODEL, REPORT_MODEL = "cxr14", "cxr-report"
CHESTXRAY14_OUTPUTS = 14
DENSENET121_PARAMETERS_IMAGENET = 7_978_856
"""torchvision's densenet121 (1000 ImageNet classes), as its model documentation lists it."""
# a report vocabulary as generators ship one: special tokens, then words (line n is token n)
VOCABULARY = ["<pad>", "<bos>", "<eos>", "<impression>", "<unk>", "the", "heart", "size", "is", "normal", ".",
              "lungs", "are", "clear", "no", "pleural", "effusion", "or", "pneumothorax", ",", "acute",
              "cardiopulmonary", "process", "mild", "cardiomegaly", "left", "basal", "atelectasis"]
REPORT_TOKENS = 24
RESULT_TIMEOUT_S = 300


def _preset(name: str) -> dict[str, Any]:
    return yaml.safe_load((PRESETS / f"{name}.yaml").read_text(encoding="utf-8"))


def _installed(preset: str, model: str, file: Path, **report: str) -> dict[str, Any]:
    """The preset's YAML entry for ``model``, pointing at ``file`` (pinned) as an admin installs it."""
    entry: dict[str, Any] = _preset(preset)["models"][model]
    entry.update(file=str(file), sha256=file_sha256(file))
    if report:
        entry["report"] = {**entry["report"], **report}
    return entry


@pytest.fixture(scope="module")
def entries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Both presets' model entries, with random weights of the real networks installed and pinned."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(14)
    classifier = save_torchscript(densenet121(CHESTXRAY14_OUTPUTS).eval(),
                                  folder / "densenet121-chestxray14.ts")
    torch.manual_seed(15)
    start, end, pad = (VOCABULARY.index(token) for token in ("<bos>", "<eos>", "<pad>"))
    generator = ReportGenerator(len(VOCABULARY), start, end, pad, max_tokens=REPORT_TOKENS).eval()
    with torch.no_grad():  # random weights stop at once or write padding: let this one write words
        for token in ("<pad>", "<bos>", "<eos>"):
            generator.output.bias[VOCABULARY.index(token)] = -20.0
    generator_file = save_torchscript(generator, folder / "report-generator.ts")
    vocabulary = folder / "vocabulary.txt"
    vocabulary.write_text("\n".join(VOCABULARY) + "\n", encoding="utf-8")
    return {
        FINDINGS_MODEL: _installed("cxr-findings", FINDINGS_MODEL, classifier),
        REPORT_MODEL: _installed("cxr-report", REPORT_MODEL, generator_file,
                                 vocabulary_sha256=file_sha256(vocabulary)),
    }


@pytest.fixture(scope="module")
def installed(entries: dict[str, dict[str, Any]]) -> dict[str, ModelConfig]:
    return {name: ModelConfig.model_validate(entry) for name, entry in entries.items()}


@pytest.fixture(scope="module")
def registry(installed: dict[str, ModelConfig], tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return ModelRegistry(installed, CPU, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def series() -> RadiographSeries:
    return load_radiograph_series([CR_FILE])


@pytest.fixture(scope="module")
def classified(registry: ModelRegistry, series: RadiographSeries) -> Findings:
    return create("cxr-findings", FINDINGS_MODEL, registry).run(series, CPU)


@pytest.fixture(scope="module")
def reported(registry: ModelRegistry, series: RadiographSeries) -> Findings:
    return create("cxr-report", REPORT_MODEL, registry).run(series, CPU)


# --- the network -------------------------------------------------------------------------------------

def test_densenet121_is_torchvisions_network_by_size_and_module_names() -> None:
    imagenet = densenet121(1000)
    assert sum(p.numel() for p in imagenet.parameters()) == DENSENET121_PARAMETERS_IMAGENET
    names = set(imagenet.state_dict())
    assert {"features.conv0.weight", "features.denseblock4.denselayer16.conv2.weight",
            "features.transition3.conv.weight", "features.norm5.running_var", "classifier.bias"} <= names
    with torch.inference_mode():
        assert densenet121(CHESTXRAY14_OUTPUTS).eval()(torch.rand(2, 3, 64, 80)).shape == (2, 14)


# --- cxr-findings ------------------------------------------------------------------------------------

def test_the_series_keeps_its_frontal_image_as_displayed(series: RadiographSeries) -> None:
    assert series.modality == "CR" and len(series.images) == 1
    image = series.images[0]
    assert image.view_position == "PA" and image.pixels.shape == (1955, 1841)
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    assert image.pixels.max() - image.pixels.min() > 0.5 and image.voi == "window 15000/30000 LINEAR"
    assert "PixelData" not in series.headers[0]
    assert series.headers[0].SOPInstanceUID == image.sop_instance_uid


def test_the_image_is_letterboxed_or_stretched_into_the_networks_input(series: RadiographSeries) -> None:
    image = series.images[0]
    stretch = ImageInputSpec(size=(224, 224), resize="stretch")
    letterbox = ImageInputSpec(size=(224, 224), channels=1, mean=(0.5,), std=(0.25,))
    stretched = network_input([image], stretch, CPU)
    boxed = network_input([image, image], letterbox, CPU)
    assert stretched.shape == (1, 3, 224, 224) and boxed.shape == (2, 1, 224, 224)
    # ImageNet normalisation: channel c holds (x - mean[c]) / std[c] of the same grey image
    grey = stretched[0] * torch.tensor(stretch.std).view(3, 1, 1) + torch.tensor(stretch.mean).view(3, 1, 1)
    torch.testing.assert_close(grey[0], grey[2])
    # 1955 × 1841: the rows fill the height, the columns are padded black (0 → -2 after normalising)
    width = round(1841 * 224 / 1955)
    padding = (224 - width) // 2
    assert padding > 0 and bool((boxed[0, 0, :, :padding] == -2.0).all())
    assert float(boxed[0, 0, :, padding:padding + width].std()) > 0.1


def test_classifier_reports_the_14_coded_findings_with_probability_and_call(
    classified: Findings, registry: ModelRegistry, series: RadiographSeries, installed: dict[str, ModelConfig]
) -> None:
    table = load_finding_table("chestxray14")
    assert [c.finding for c in classified.classifications] == [
        codes.Code.parse(spec.code, spec.meaning) for spec in table.values()]
    # the probabilities are the sigmoid of the network's own output on the prepared image
    network = registry.get(FINDINGS_MODEL).source.build_module()
    spec = installed[FINDINGS_MODEL].image
    with torch.inference_mode():
        expected = network(network_input(series.images, spec, CPU)).sigmoid()[0].tolist()
    for classification, spec_, probability in zip(classified.classifications, table.values(), expected,
                                                  strict=True):
        assert 0.0 <= classification.probability <= 1.0
        assert classification.probability == pytest.approx(probability, abs=1e-5)
        assert classification.present == (classification.probability >= spec_.threshold)
        site = None if spec_.site is None else codes.Code.parse(spec_.site, spec_.site_meaning or "")
        assert classification.finding_site == site
    assert classified.source_sop_instance_uids == series.sop_instance_uids
    assert classified.algorithm.model_sha256 == installed[FINDINGS_MODEL].sha256


def test_every_sct_code_of_the_finding_table_has_a_valid_check_digit() -> None:
    for spec in load_finding_table("chestxray14").values():
        for code in (spec.code, spec.site):
            if code is not None and code.startswith("SCT:"):
                assert _verhoeff_valid(code.removeprefix("SCT:")), code


def test_onnx_runtime_runs_the_classifier_as_torch_does(
    classified: Findings, installed: dict[str, ModelConfig], series: RadiographSeries, tmp_path: Path
) -> None:
    """The TorchScript file exported to ONNX (4-D input), then that ONNX file configured as the model."""
    config = installed[FINDINGS_MODEL].model_copy(update={"backend": "onnxruntime"})
    registry = ModelRegistry({FINDINGS_MODEL: config}, CPU, tmp_path)
    exported = create("x", FINDINGS_MODEL, registry).run(series, CPU)
    (onnx_file,) = (tmp_path / "onnx").glob("*.onnx")
    as_onnx = ModelConfig.model_validate({**config.model_dump(), "file": onnx_file, "format": "onnx",
                                          "sha256": file_sha256(onnx_file)})
    registry = ModelRegistry({FINDINGS_MODEL: as_onnx}, CPU, tmp_path / "other")
    from_file = create("x", FINDINGS_MODEL, registry).run(series, CPU)
    expected = [c.probability for c in classified.classifications]
    for findings in (exported, from_file):
        assert [c.probability for c in findings.classifications] == pytest.approx(expected, abs=1e-4)


def test_site_thresholds_replace_the_tables(
    classified: Findings, installed: dict[str, ModelConfig], registry: ModelRegistry, series: RadiographSeries
) -> None:
    """Thresholds just past each probability flip every call (same model file: loaded once more)."""
    table = load_finding_table("chestxray14")
    flipped = {spec.name: (c.probability + 1e-3 if c.present else max(c.probability - 1e-3, 1e-6))
               for spec, c in zip(table.values(), classified.classifications, strict=True)}
    config = installed[FINDINGS_MODEL].model_copy(update={"thresholds": flipped})
    calibrated = ModelRegistry({FINDINGS_MODEL: config}, CPU, registry.cache_dir)
    found = create("cxr-findings", FINDINGS_MODEL, calibrated).run(series, CPU)
    assert [c.present for c in found.classifications] == [not c.present for c in classified.classifications]


def _copy(path: Path, **attributes: Any) -> Path:
    """The real DX with ``attributes`` changed, as another instance."""
    copy = pydicom.dcmread(DX_FILE)
    copy.SOPInstanceUID = pydicom.uid.generate_uid()
    for keyword, value in attributes.items():
        setattr(copy, keyword, value)
    copy.save_as(path, enforce_file_format=True)
    return path


def test_a_series_keeps_its_frontal_views_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    lateral = _copy(tmp_path / "ll.dcm", ViewPosition="LL", InstanceNumber=1)
    frontal = _copy(tmp_path / "pa.dcm", ViewPosition="PA", InstanceNumber=2)
    kept = load_radiograph_series([lateral, frontal])
    assert [image.view_position for image in kept.images] == ["PA"]

    with pytest.raises(NotApplicable, match="only LL views; the pipeline reads frontal chest radiographs"):
        load_radiograph_series([lateral])
    hand = _copy(tmp_path / "hand.dcm", BodyPartExamined="HAND")
    with pytest.raises(NotApplicable, match="Body Part HAND, not the chest"):
        load_radiograph_series([hand])
    ct = _copy(tmp_path / "ct.dcm", Modality="CT")
    with pytest.raises(NotApplicable, match="is CT, not a radiograph"):
        load_radiograph_series([ct])


def test_a_model_with_another_number_of_outputs_fails_naming_the_key(
    installed: dict[str, ModelConfig], series: RadiographSeries, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    three = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    file = save_torchscript(three.eval(), tmp_path / "three.ts")
    config = installed[FINDINGS_MODEL].model_copy(update={"file": file, "sha256": file_sha256(file)})
    pipeline = create("cxr-findings", FINDINGS_MODEL, ModelRegistry({FINDINGS_MODEL: config}, CPU, tmp_path))
    with pytest.raises(Exception, match=r"gives \(3,\) values per image, but models.cxr14.findings names 14"):
        pipeline.run(series, CPU)


# --- cxr-report --------------------------------------------------------------------------------------

def _token_ids(*words: str) -> list[int]:
    return [VOCABULARY.index(word) for word in words]


def test_token_ids_become_findings_and_impression_text(installed: dict[str, ModelConfig]) -> None:
    spec = installed[REPORT_MODEL].report
    assert spec is not None
    read = TokenReader(VOCABULARY, spec, REPORT_MODEL)
    ids = _token_ids("<bos>", "the", "heart", "is", "normal", ".", "no", "pleural", "effusion", "or",
                     "pneumothorax", ".", "<impression>", "no", "acute", "cardiopulmonary", "process", ".",
                     "<eos>", "lungs", "<pad>")
    report = read(ids)
    assert report.findings == "The heart is normal. No pleural effusion or pneumothorax."
    assert report.impression == "No acute cardiopulmonary process."
    findings_only = read(_token_ids("mild", "cardiomegaly", ",", "left", "basal", "atelectasis"))
    assert findings_only.findings == "Mild cardiomegaly, left basal atelectasis"
    assert findings_only.impression == ""
    with pytest.raises(ModelFormatError, match="token id 99, outside its vocabulary of 28 tokens"):
        read([99])
    with pytest.raises(ModelFormatError, match="no <end> token"):
        TokenReader(VOCABULARY, spec.model_copy(update={"end_token": "<end>"}), REPORT_MODEL)


def test_report_pipeline_writes_what_the_generator_decodes(
    reported: Findings, registry: ModelRegistry, series: RadiographSeries, installed: dict[str, ModelConfig]
) -> None:
    config = installed[REPORT_MODEL]
    network = registry.get(REPORT_MODEL).source.build_module()
    assert config.image is not None and config.report is not None
    with torch.inference_mode():
        ids = network(network_input(series.images[:1], config.image, CPU))[0].tolist()
    expected = TokenReader(VOCABULARY, config.report, REPORT_MODEL)(ids)
    texts = {text.heading: text.text for text in reported.report_text}
    assert texts[codes.FINDING] == expected.findings and expected.findings
    assert texts.get(codes.IMPRESSION, "") == expected.impression
    assert reported.source_sop_instance_uids == (series.images[0].sop_instance_uid,)


def test_vocabulary_missing_or_replaced_fails_naming_the_file_and_key(
    installed: dict[str, ModelConfig], tmp_path: Path
) -> None:
    config = installed[REPORT_MODEL]
    assert config.report is not None
    moved = config.model_copy(update={"file": tmp_path / "report-generator.ts"})
    with pytest.raises(ModelFileMissing, match=rf"vocabulary {tmp_path / 'vocabulary.txt'} does not exist.*"
                                               r"models.cxr-report.report.vocabulary"):
        read_vocabulary(REPORT_MODEL, moved)
    (tmp_path / "vocabulary.txt").write_text("<eos>\n", encoding="utf-8")
    with pytest.raises(ModelChecksumMismatch, match=r"models\.cxr-report\.report\.vocabulary_sha256 expects"):
        read_vocabulary(REPORT_MODEL, moved)


# --- results and configuration -------------------------------------------------------------------------

def _write(dataset: pydicom.Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_findings_and_report_encode_as_valid_srs(
    classified: Findings, reported: Findings, series: RadiographSeries, tmp_path: Path
) -> None:
    headers = list(series.headers)
    sr = build_sr(classified, headers, None, series_instance_uid=pydicom.uid.generate_uid(),
                  sop_instance_uid=pydicom.uid.generate_uid(), series_number=9902)
    text = build_text_sr(reported, headers, series_instance_uid=pydicom.uid.generate_uid(),
                         sop_instance_uid=pydicom.uid.generate_uid(), series_number=9903)
    assert text.SeriesDescription.startswith(MACHINE_GENERATED_PREFIX)
    check_iod(_write(sr, tmp_path / "sr.dcm")).assert_no_errors()
    check_iod(_write(text, tmp_path / "text.dcm")).assert_no_errors()


@pytest.mark.parametrize(("change", "message"), [
    ({"image": None}, "a classification model needs image"),
    ({"findings": {0: {"name": "A", "code": "SCT:46621007", "meaning": "Atelectasis"},
                   2: {"name": "B", "code": "SCT:4147007", "meaning": "Mass"}}}, "without gaps; got 0, 2"),
    ({"thresholds": {"Effusions": 0.3}}, "thresholds names unknown finding"),
    ({"task": "segmentation"}, "image, findings apply to task classification or report"),
    ({"format": "nnunetv2"}, "a classification model is a torchscript or onnx file"),
])
def test_classifier_configuration_errors_name_the_key(change: dict[str, Any], message: str) -> None:
    entry = {**_preset("cxr-findings")["models"][FINDINGS_MODEL], **change}
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate(entry)


def test_config_check_points_at_the_model_key_and_line(tmp_path: Path) -> None:
    data = _preset("cxr-report")
    del data["models"][REPORT_MODEL]["report"]
    path = tmp_path / "radnode.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"radnode.yaml:\d+: models.cxr-report: .*needs report"):
        load_config(path)


@pytest.mark.parametrize(("preset", "model", "expected"), [
    ("cxr-findings", FINDINGS_MODEL, "/var/lib/radnode/models/cxr-findings/densenet121-chestxray14.ts"),
    ("cxr-report", REPORT_MODEL, "/var/lib/radnode/models/cxr-report/report-generator.ts"),
])
def test_each_preset_without_its_weights_names_the_file_and_where_it_is_expected(
    preset: str, model: str, expected: str, series: RadiographSeries, tmp_path: Path
) -> None:
    config = load_config(PRESETS / f"{preset}.yaml")
    if Path(expected).exists():
        pytest.skip(f"{expected} is installed on this host")
    pipeline = create(preset, model, ModelRegistry(config.models, CPU, tmp_path))
    with pytest.raises(ModelFileMissing) as missing:
        pipeline.run(series, CPU)
    assert str(missing.value) == (f"model {model!r}: {expected} does not exist; fix models.{model}.file in "
                                  "the configuration or copy the model there")


# --- end to end: Orthanc → radnode (cxr-findings, cxr-report) → Orthanc -----------------------------------

def _results(pacs: Orthanc, study_id: str) -> dict[tuple[str, str], pydicom.Dataset]:
    """The study's SR objects by SOP Class (TID 1500 Comprehensive 3D SR, text Comprehensive SR) and
    the algorithm that wrote them (Manufacturer's Model Name)."""
    found = {}
    for item in pacs.series_of_study(study_id):
        if item["MainDicomTags"].get("Modality") == "SR":
            for instance in pacs.instances_of_series(item["ID"]):
                ds = pydicom.dcmread(io.BytesIO(pacs.download_instance(instance["ID"])))
                found[(str(ds.SOPClassUID), str(ds.ManufacturerModelName))] = ds
    return found


@pytest.mark.slow
def test_chest_radiograph_routed_from_orthanc_comes_back_with_findings_and_draft_report(
    tmp_path: Path, entries: dict[str, dict[str, Any]], classified: Findings, reported: Findings,
    orthanc_factory: Callable[..., Orthanc],
) -> None:
    pacs = orthanc_factory()
    findings_preset, report_preset = _preset("cxr-findings"), _preset("cxr-report")
    route = {**findings_preset["routes"][0], "pipelines": ["cxr-findings", "cxr-report"], "send_to": ["pacs"]}
    node = RadnodeProcess.beside(pacs, tmp_path / "radnode", routes=[route],
        extra={"models": entries,
               "pipelines": {**findings_preset["pipelines"], **report_preset["pipelines"]}})
    study_uid = pydicom.dcmread(CR_FILE, stop_before_pixels=True).StudyInstanceUID

    with node:
        pacs.upload(CR_FILE)
        study_id = pacs.send_study("radnode", study_uid)
        start = time.monotonic()
        results = wait_for(lambda: _results(pacs, study_id), timeout=RESULT_TIMEOUT_S, interval=1.0,
                           until=lambda found: len(found) == 3,
                           what="findings SR, its text SR and the report SR in Orthanc")
        status = node.cli("status")
    print(f"CR sent → findings SRs + report SR in Orthanc: {time.monotonic() - start:.1f} s")

    classifier, generator = classified.algorithm.name, reported.algorithm.name
    measurement_file = _write(results[(Comprehensive3DSRStorage, classifier)], tmp_path / "findings-sr.dcm")
    report = hd.sr.MeasurementReport.from_sequence(hd.sr.srread(measurement_file).content)
    groups = report.get_image_measurement_groups()
    table = load_finding_table("chestxray14")
    assert len(groups) == CHESTXRAY14_OUTPUTS
    for group, spec, expected in zip(groups, table.values(), classified.classifications, strict=True):
        assert (group.finding_type.value, group.finding_type.scheme_designator) == tuple(
            spec.code.split(":", 1)[::-1])
        (probability,) = group.get_measurements()
        assert 0.0 <= probability.value <= 1.0
        assert probability.value == pytest.approx(expected.probability, abs=1e-5)
        calls = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
        present = codes.PRESENT if probability.value >= spec.threshold else codes.ABSENT
        assert calls[spec.code.split(":", 1)[1]] == present.value

    statements = {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
                  for section in results[(ComprehensiveSRStorage, classifier)].ContentSequence
                  if section.ValueType == "CONTAINER" for item in section.ContentSequence
                  if item.ValueType == "TEXT"}
    for expected in classified.classifications:  # the readable companion, as a viewer shows it
        call, probability = re.fullmatch(r"(\w+) \(probability ([0-9.]+)\)",
                                         statements[expected.finding.meaning]).groups()
        assert call == classification_statement(expected).split()[0]
        assert float(probability) == pytest.approx(expected.probability, abs=0.005 + 1e-5)

    text = results[(ComprehensiveSRStorage, generator)]
    assert text.SeriesDescription.startswith(MACHINE_GENERATED_PREFIX)
    assert (text.VerificationFlag, text.PreliminaryFlag) == ("UNVERIFIED", "PRELIMINARY")
    (section,) = [item for item in text.ContentSequence if item.ValueType == "CONTAINER"]
    headings = (codes.FINDING.value, codes.IMPRESSION.value)  # beside TID 4019's algorithm name, version…
    written = {item.ConceptNameCodeSequence[0].CodeValue: item.TextValue for item in section.ContentSequence
               if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue in headings}
    assert written == {t.heading.value: t.text for t in reported.report_text}

    check_iod(measurement_file).assert_no_errors()
    check_iod(_write(text, tmp_path / "report-sr.dcm")).assert_no_errors()
    assert status.returncode == 0, status.stderr
    assert "cxr-findings" in status.stdout and "cxr-report" in status.stdout
    assert status.stdout.count("succeeded") >= 2
