"""The whole-body presets (totalsegmentator-ct, its 1.5 mm parts, mrsegmentator, vista3d) on the chest CT.

Each preset's model folder is built here, in the format the published model ships, with random
weights of its architecture and its real number of outputs; the preset's own ``models:`` entry
runs it, with only ``file`` and ``sha256`` pointed at the built folder. What a CPU test cannot
afford is shrunk, and only that:

======================  ==========================================================  ======================
preset                  as published                                                shrunk here to
======================  ==========================================================  ======================
totalsegmentator-ct     nnU-Net PlainConvUNet, 6 stages, features 32…320, 118       features 4…40, patch
                        outputs, fold 0, patch 128³ at 3 mm, axes SAR               64³, spacing 6 mm
mrsegmentator           nnU-Net 3d_fullres, 41 outputs, folds 0–4 averaged          as above (the plans of
                                                                                    nnU-Net's default planner)
vista3d                 MONAI bundle, vista3d132 (SegResNetDS2 encoder, 48          encoder_embed_dim 8,
                        features), 133 outputs (132 labels), 128³ at 1.5 mm         patch 64³, spacing 6 mm
======================  ==========================================================  ======================

With random weights some labels are absent: the tests assert on those present, that each
present segment carries its label table's code, that the SR's volumes (and mean HU) are the
SEG's, and that dciodvfy finds no error. The totalsegmentator-ct study goes Orthanc → radnode →
Orthanc, beside an mrsegmentator model whose folder is missing, whose job must fail naming it; a
second node runs mrsegmentator, vista3d and the 1.5 mm task's five part models (merged) on the same
study through Orthanc. The 1.5 mm parts are the 3 mm network's test size, each naming its share of
the 117 classes. (Every preset's missing or unpinned weights: tests/test_presets_config.py.)

The sliding window's bounded path (labels slab by slab, never the whole volume's logits) is proven
equal to the argmax of the full blended logits first.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
import yaml

from dicom_sr import codes
from dicom_sr.findings import Findings
from dicom_sr.seg import build_seg
from dicom_sr.sr import build_sr
from dicom_sr.uids import ResultKind, result_uids
from inference.errors import ModelFormatError
from inference.formats import model_sha256, open_model
from inference.formats.vista3d import NEVER, EverythingSegmenter
from inference.labels import load_label_table
from inference.model_config import LabelSpec, ModelConfig
from inference.pipelines import create
from inference.registry import ModelRegistry
from inference.sliding_window import sliding_window, sliding_window_labels
from inference.volume import Volume, load_series
from node.config import load_config
from tests.dciodvfy import check_iod
from tests.nnunet_folders import CT_STATISTICS, plain_conv_unet_plans, write_nnunet_folder
from tests.node_process import RadnodeProcess
from tests.orthanc import Orthanc, wait_for
from tests.tiny_models import tiny_segmenter

CPU = torch.device("cpu")
PRESETS = Path(__file__).resolve().parent.parent / "config" / "presets"
CHEST_CT = Path(__file__).resolve().parent / "data" / "ct_chest_lungdx_a0001"  # conftest's chest_ct_dir
TEST_SPACING_MM = 6.0
TEST_PATCH = 64
NNUNET_FEATURES = (4, 8, 16, 32, 40, 40)  # nnU-Net's 32, 64, 128, 256, 320, 320 divided by 8
VISTA3D_FEATURES = 8  # vista3d132's encoder_embed_dim 48
RESULT_TIMEOUT_S = 300


# --- the bounded sliding window -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("shape", "patch", "overlap", "batch_size", "scheme"),
    [
        ((70, 24, 33), (16, 16, 16), 0.5, 5, "nnunet"),  # slabs along slices; batches span two slab starts
        ((37, 41, 29), (16, 16, 16), 0.5, 3, "monai"),
        ((20, 90, 33), (16, 16, 16), 0.25, 4, "monai"),  # slabs along rows: the axis with most windows
        ((60, 20, 20), (8, 16, 16), 0.5, 1, "nnunet"),  # many slabs; the ring wraps
        ((10, 40, 12), (16, 24, 16), 0.5, 2, "nnunet"),  # smaller than the patch: padded
    ],
)
def test_labels_slab_by_slab_equal_the_argmax_of_the_whole_volume_logits(
    shape: tuple[int, int, int], patch: tuple[int, int, int], overlap: float, batch_size: int, scheme: Any
) -> None:
    network = tiny_segmenter(seed=3, classes=7)
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(4))
    kept = (0, 3, 6)

    with torch.inference_mode():
        logits = sliding_window(image, network, patch, overlap, batch_size, CPU, scheme=scheme)
        found = sliding_window_labels(image, network, patch, overlap, batch_size, CPU, scheme=scheme,
                                      probabilities=kept)

    assert found.labels.dtype == torch.uint8
    assert torch.equal(found.labels.long(), logits.argmax(0))
    softmax = logits.softmax(0)
    assert found.probabilities.keys() == set(kept)
    for channel in kept:  # softmax's vectorised sums round the last bit by block size
        torch.testing.assert_close(found.probabilities[channel], softmax[channel], rtol=0, atol=1e-6)


# --- the presets' model folders ---------------------------------------------------------------------

def _table(preset: str) -> dict[int, LabelSpec]:
    return load_label_table(preset)


def _names(preset: str) -> list[str]:
    table = _table(preset)
    return [table[value].name for value in sorted(table)]


def _totalsegmentator_folder(root: Path) -> Path:
    """Task 297's results folder, named as TotalSegmentator's release names it."""
    plans = plain_conv_unet_plans("Dataset297_TotalSegmentator_total_3mm_1559subj", [TEST_SPACING_MM] * 3,
                                  [TEST_PATCH] * 3, NNUNET_FEATURES)
    folder = (root / "Dataset297_TotalSegmentator_total_3mm_1559subj"
              / "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres")
    return write_nnunet_folder(folder, plans, _names("totalsegmentator-ct"),
                               trainer="nnUNetTrainer_4000epochs_NoMirroring")


def _mrsegmentator_folder(root: Path) -> Path:
    """MRSegmentator's weights folder: five folds. Its channel is MR; it is run on CT like any series."""
    plans = plain_conv_unet_plans("Dataset_MRSegmentator", [TEST_SPACING_MM] * 3, [TEST_PATCH] * 3,
                                  NNUNET_FEATURES, normalization="ZScoreNormalization")
    return write_nnunet_folder(root / "mrsegmentator", plans, _names("mrsegmentator"), folds=range(5),
                               channel="MRI", trainer="nnUNetTrainerNoMirroring")


def _vista3d_inference_config() -> dict[str, Any]:
    """configs/inference.json of the Model Zoo's vista3d bundle (0.6.0), in its own shape and keys."""
    return {
        "imports": ["$import glob", "$import os", "$import scripts", "$import numpy as np", "$import json",
                    "$import pathlib"],
        "bundle_root": "./",
        "image_key": "image",
        "everything_labels": "$list(set([i+1 for i in range(132)]) - set([2,16,18,20,21,23,24,25,26,27,128,"
                             "129,130,131,132]))",
        "metadata_path": "$@bundle_root + '/configs/metadata.json'",
        "metadata": "$json.loads(pathlib.Path(@metadata_path).read_text())",
        "labels_dict": "$@metadata['network_data_format']['outputs']['pred']['channel_def']",
        "subclass": {"2": [14, 5], "20": [28, 29, 30, 31, 32],
                     "21": "$list(range(33, 57)) + list(range(63, 98)) + [114, 120, 122]"},
        "input_channels": 1,
        "resample_spacing": [TEST_SPACING_MM] * 3,
        "sw_batch_size": 1,
        "patch_size": [TEST_PATCH] * 3,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "use_point_window": True,
        "network_def": f"$monai.networks.nets.vista3d132(encoder_embed_dim={VISTA3D_FEATURES}, "
                       "in_channels=@input_channels)",
        "network": "$@network_def.to(@device)",
        "preprocessing_transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key", "reader": "NibabelGPUReader",
             "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "EnsureTyped", "keys": "@image_key", "device": "@device", "track_meta": True},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@resample_spacing", "mode": "bilinear"},
            {"_target_": "CropForegroundd", "keys": "@image_key", "allow_smaller": True, "margin": 10,
             "source_key": "@image_key"},
            {"_target_": "monai.apps.vista3d.transforms.VistaPreTransformd", "keys": "@image_key",
             "subclass": "@subclass", "labels_dict": "@labels_dict"},
            {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -963.8247715525971,
             "a_max": 1053.678477684517, "b_min": 0, "b_max": 1, "clip": True},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "CastToTyped", "keys": "@image_key", "dtype": "$torch.float32"},
        ],
        "preprocessing": {"_target_": "Compose", "transforms": "$@preprocessing_transforms "},
        "inferer": {"_target_": "scripts.inferer.Vista3dInferer", "roi_size": "@patch_size", "overlap": 0.3,
                    "sw_batch_size": "@sw_batch_size", "use_point_window": "@use_point_window"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "ToDeviced", "keys": "pred", "device": "cpu", "_disabled_": True},
            {"_target_": "monai.apps.vista3d.transforms.VistaPostTransformd", "keys": "pred"},
            {"_target_": "Invertd", "keys": "pred", "transform": "$copy.deepcopy(@preprocessing)",
             "orig_keys": "@image_key", "nearest_interp": True, "to_tensor": True},
        ]},
    }


def _vista3d_bundle(root: Path) -> Path:
    """The vista3d bundle folder: configs/inference.json, configs/metadata.json, models/model.pt."""
    from monai.networks.nets import vista3d132

    bundle = root / "vista3d"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps(_vista3d_inference_config(), indent=2),
                                                       encoding="utf-8")
    channels = {"0": "background", **{str(value): name for value, name in
                                      enumerate(_names("vista3d"), start=1)}}
    metadata = {"version": "0.6.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 1,
                             "channel_def": channels}},
    }}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    torch.manual_seed(0)
    torch.save(vista3d132(encoder_embed_dim=VISTA3D_FEATURES).state_dict(), bundle / "models" / "model.pt")
    return bundle


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "totalsegmentator-ct": _totalsegmentator_folder,
    "mrsegmentator": _mrsegmentator_folder,
    "vista3d": _vista3d_bundle,
}


def _preset_model(preset: str) -> tuple[str, ModelConfig]:
    """The preset file's one model entry (name, config), as ``radnode config check`` validated it."""
    ((name, model),) = load_config(PRESETS / f"{preset}.yaml").models.items()
    return name, model


def _sections(preset: str, folder: Path, pin: bool = True) -> dict[str, Any]:
    """The preset's models and pipelines with the model at ``folder`` (pinned, as an admin leaves it
    once installed; unpinned, as the preset ships)."""
    document = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text(encoding="utf-8"))
    models = document["models"]
    for model in models.values():
        model["file"] = str(folder)
        if pin:
            model["sha256"] = model_sha256(folder)
    return {"models": models, "pipelines": document["pipelines"]}


@pytest.fixture(scope="module")
def chest() -> Volume:
    return load_series(sorted(CHEST_CT.glob("*.dcm")))


# --- what radnode reads from each published folder ------------------------------------------------

def test_totalsegmentator_folder_gives_the_plans_input_on_totalsegmentators_axes(tmp_path: Path) -> None:
    folder = _totalsegmentator_folder(tmp_path)
    name, model = _preset_model("totalsegmentator-ct")
    source = open_model(name, model.model_copy(update={"file": folder, "sha256": model_sha256(folder)}))

    spec = source.input
    assert spec.orientation == "SAR"  # the preset's: TotalSegmentator reorients to RAS before nnU-Net reads
    assert (spec.spacing_mm, spec.patch_size) == ((TEST_SPACING_MM,) * 3, (TEST_PATCH,) * 3)
    assert (spec.window_scheme, spec.overlap, spec.batch_size) == ("nnunet", 0.5, 1)
    assert (spec.normalization.kind, spec.normalization.low, spec.normalization.high) == (
        "fixed", CT_STATISTICS["percentile_00_5"], CT_STATISTICS["percentile_99_5"])
    assert source.class_names == {value: label.name for value, label in _table("totalsegmentator-ct").items()}


def test_vista3d_bundle_gives_its_preprocessing_and_its_automatic_labels(tmp_path: Path) -> None:
    bundle = _vista3d_bundle(tmp_path)
    name, model = _preset_model("vista3d")
    source = open_model(name, model.model_copy(update={"file": bundle, "sha256": model_sha256(bundle)}))

    spec = source.input
    assert (spec.orientation, spec.spacing_mm, spec.patch_size) == ("RAS", (TEST_SPACING_MM,) * 3,
                                                                    (TEST_PATCH,) * 3)
    assert (spec.window_scheme, spec.overlap, spec.batch_size) == ("monai", 0.3, 1)
    assert (spec.normalization.kind, spec.normalization.low) == ("window", -963.8247715525971)
    assert source.build_module is not None
    batch = torch.rand((1, 1, 32, 32, 32), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = source.build_module()(batch)
    assert logits.shape[1] == len(_table("vista3d")) + 1
    never = [2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132]  # not in everything_labels
    assert bool((logits[:, never] == NEVER).all()) and bool((logits[:, 0] == 0).all())


def test_vista3d_everything_labels_are_monai_vista_post_transform_labels() -> None:
    """The argmax radnode takes over EverythingSegmenter's channels is VistaPostTransformd's label map."""
    from monai.apps.vista3d.transforms import VistaPostTransformd
    from monai.networks.nets import vista3d132

    torch.manual_seed(2)
    network = vista3d132(encoder_embed_dim=VISTA3D_FEATURES).eval()
    labels = torch.tensor([1, 3, 5, 6, 22, 57, 115])
    batch = torch.rand((1, 1, 32, 32, 32), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        prompted = network(batch, class_vector=labels.view(-1, 1), transpose=True)[0]
        ours = EverythingSegmenter(network, labels.tolist(), 133)(batch)[0].argmax(0)
    monai = VistaPostTransformd(keys="pred")({"pred": prompted.clone(), "label_prompt": labels})["pred"][0]

    assert len(set(ours.unique().tolist())) > 2  # background and several classes
    assert torch.equal(ours, monai.long())


# --- what a preset's results must say ---------------------------------------------------------------

def _sr_groups(sr_file: Path) -> dict[str, dict[str, float]]:
    """Tracking identifier → {measurement meaning: value} of a TID 1500 report."""
    report = hd.sr.MeasurementReport.from_sequence(hd.sr.srread(sr_file).content)
    return {group.tracking_identifier: {m.name.meaning: float(m.value) for m in group.get_measurements()}
            for group in report.get_volumetric_roi_measurement_groups()}


def _check_results(preset: str, seg_file: Path, sr_file: Path, volume: Volume) -> set[str]:
    """The checks every preset's SEG and SR must pass; returns the labels found."""
    check_iod(seg_file).assert_no_errors()
    check_iod(sr_file).assert_no_errors()
    seg = pydicom.dcmread(seg_file)
    assert seg.StudyInstanceUID == volume.headers[0].StudyInstanceUID
    by_name = {label.name: label for label in _table(preset).values()}
    segments = {s.SegmentNumber: s for s in seg.SegmentSequence}
    assert segments, "the SEG has no segment"
    for segment in segments.values():
        label = by_name[segment.SegmentLabel]
        found = segment.SegmentedPropertyTypeCodeSequence[0]
        assert f"{found.CodingSchemeDesignator}:{found.CodeValue}" == label.code, segment.SegmentLabel
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        assert f"{category.CodingSchemeDesignator}:{category.CodeValue}" == label.category
        if label.modifier is not None:
            modifier = found.SegmentedPropertyTypeModifierCodeSequence[0]
            assert f"{modifier.CodingSchemeDesignator}:{modifier.CodeValue}" == label.modifier
    # voxel count and HU sum of each segment, from its frames and the source slices they reference
    slice_of = {uid: index for index, uid in enumerate(volume.sop_instance_uids)}
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns).astype(bool)
    voxels = volume.voxels.numpy().astype(np.float64)
    counts = dict.fromkeys(segments, 0)
    hu_sums = dict.fromkeys(segments, 0.0)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        counts[number] += int(frame.sum())
        hu_sums[number] += float(voxels[slice_of[source]][frame].sum())
    groups = _sr_groups(sr_file)
    assert groups.keys() == {s.SegmentLabel for s in segments.values()}
    voxel_ml = volume.voxel_volume_mm3 / 1000
    for number, segment in segments.items():
        measured = groups[segment.SegmentLabel]
        assert measured[codes.VOLUME.meaning] == pytest.approx(counts[number] * voxel_ml, rel=1e-6)
        if volume.modality == "CT":
            mean = measured[codes.ATTENUATION_COEFFICIENT.meaning]
            assert mean == pytest.approx(hu_sums[number] / counts[number], rel=1e-6, abs=1e-3)
    return {s.SegmentLabel for s in segments.values()}


def _write_results(findings: Findings, volume: Volume, folder: Path) -> tuple[Path, Path]:
    """SEG and SR files of ``findings``, encoded as the worker encodes them."""
    source = volume.headers[0]

    def uids(kind: ResultKind) -> dict[str, str]:
        ids = result_uids(source.SeriesInstanceUID, findings.algorithm.name, findings.algorithm.version,
                          findings.algorithm.model_sha256, kind)
        return {"series_instance_uid": ids.series_instance_uid, "sop_instance_uid": ids.sop_instance_uid}

    seg = build_seg(findings, volume.headers, series_number=9901, **uids(ResultKind.SEG))
    sr = build_sr(findings, volume.headers, seg, series_number=9902, **uids(ResultKind.SR))
    seg_file, sr_file = folder / "seg.dcm", folder / "sr.dcm"
    seg.save_as(seg_file, enforce_file_format=True)
    sr.save_as(sr_file, enforce_file_format=True)
    return seg_file, sr_file


# --- each preset through the pipeline, and its missing weights ------------------------------------

@pytest.mark.parametrize("preset", ["mrsegmentator", "vista3d"])
def test_preset_segments_the_chest_ct_with_its_tables_codes(preset: str, chest: Volume,
                                                            tmp_path: Path) -> None:
    folder = BUILDERS[preset](tmp_path / "models")
    name, model = _preset_model(preset)
    model = model.model_copy(update={"file": folder, "sha256": model_sha256(folder), "backend": "torch"})
    registry = ModelRegistry({name: model}, CPU, tmp_path / "cache")

    start = time.perf_counter()
    findings = create(preset, name, registry).run(chest, CPU)
    print(f"{preset}: {len(findings.segments)} segments in {time.perf_counter() - start:.1f} s "
          "(test-size network)")

    assert max(registry.get(name).source.class_names) == len(_table(preset))
    found = _check_results(preset, *_write_results(findings, chest, tmp_path), chest)
    assert found == {segment.label for segment in findings.segments}


# --- TotalSegmentator's 1.5 mm task: five part models, one merged segmentation -------------------

PARTS_PRESET = "totalsegmentator-ct-1.5mm"


def _part_folders(root: Path, count: int) -> list[Path]:
    """Part models of the 1.5 mm task, each naming its share of the 117 classes as its dataset.json does."""
    names = _names("totalsegmentator-ct")
    folders = []
    for part, share in enumerate(np.array_split(np.arange(len(names)), count), start=1):
        plans = plain_conv_unet_plans(f"Dataset29{part}_TotalSegmentator_part{part}", [TEST_SPACING_MM] * 3,
                                      [TEST_PATCH] * 3, NNUNET_FEATURES)
        folders.append(write_nnunet_folder(root / f"part{part}", plans, [names[i] for i in share],
                                           trainer="nnUNetTrainerNoMirroring"))
    return folders


def _part_registry(root: Path) -> tuple[list[str], ModelRegistry]:
    config = load_config(PRESETS / f"{PARTS_PRESET}.yaml")
    names = config.pipelines[PARTS_PRESET].model
    assert isinstance(names, list) and len(names) == 5
    models = {name: config.models[name].model_copy(update={"file": folder, "sha256": model_sha256(folder),
                                                           "backend": "torch"})
              for name, folder in zip(names, _part_folders(root / "models", len(names)), strict=True)}
    return names, ModelRegistry(models, CPU, root / "cache")


def test_part_models_merge_into_one_segmentation_where_later_parts_win(chest: Volume, tmp_path: Path) -> None:
    names, registry = _part_registry(tmp_path)

    merged = create(PARTS_PRESET, names, registry).run(chest, CPU)

    expected: dict[str, np.ndarray] = {}  # each part alone, painted over the earlier ones
    for name in names:
        for segment in create(name, name, registry).run(chest, CPU).segments:
            for earlier in expected.values():
                earlier &= ~segment.full_mask()
            expected[segment.label] = segment.full_mask()
    expected = {label: mask for label, mask in expected.items() if mask.any()}
    assert [s.label for s in merged.segments] == list(expected)
    for segment in merged.segments:
        np.testing.assert_array_equal(segment.full_mask(), expected[segment.label])
    found = _check_results("totalsegmentator-ct", *_write_results(merged, chest, tmp_path), chest)
    assert found == expected.keys()
    digests = "".join(registry.config(name).sha256 for name in names)
    assert merged.algorithm.model_sha256 == hashlib.sha256(digests.encode()).hexdigest()


def test_a_part_class_missing_from_the_table_is_named(tmp_path: Path) -> None:
    plans = plain_conv_unet_plans("Dataset999_x", [TEST_SPACING_MM] * 3, [TEST_PATCH] * 3, NNUNET_FEATURES)
    folder = write_nnunet_folder(tmp_path / "odd", plans, ["spleen", "not_an_organ"])
    name, model = "totalsegmentator-organs", load_config(PRESETS / f"{PARTS_PRESET}.yaml").models[
        "totalsegmentator-organs"]
    model = model.model_copy(update={"file": folder, "sha256": model_sha256(folder)})

    with pytest.raises(ModelFormatError, match=rf"models\.{name}\.labels has no label named not_an_organ"):
        open_model(name, model)


# --- end to end: Orthanc → radnode (totalsegmentator-ct) → Orthanc ---------------------------------

@pytest.mark.slow
def test_totalsegmentator_study_from_orthanc_comes_back_coded_and_a_missing_model_is_named(
    tmp_path: Path, chest_ct_dir: Path, chest: Volume, orthanc_factory: Callable[..., Orthanc]
) -> None:
    ts = _sections("totalsegmentator-ct", _totalsegmentator_folder(tmp_path / "models"))
    missing = tmp_path / "models" / "mrsegmentator"  # never installed
    mr = _sections("mrsegmentator", missing, pin=False)
    sections = {key: {**ts[key], **mr[key]} for key in ("models", "pipelines")}
    pacs = orthanc_factory()
    node = RadnodeProcess.beside(
        pacs, tmp_path / "radnode",
        routes=[{"match": {"Modality": "CT"}, "pipelines": ["totalsegmentator-ct", "mrsegmentator"],
                 "send_to": ["pacs"]}],
        extra=sections,
    )
    study_uid = pydicom.dcmread(next(chest_ct_dir.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID

    with node:
        pacs.upload_folder(chest_ct_dir)
        study_id = pacs.send_study("radnode", study_uid)
        start = time.monotonic()
        results = pacs.wait_for_results(study_id, "SEG and SR of totalsegmentator-ct in Orthanc",
                                        RESULT_TIMEOUT_S)
        print(f"last instance sent → totalsegmentator-ct SEG+SR in Orthanc: {time.monotonic() - start:.1f} s")
        status = wait_for(lambda: node.cli("status"), timeout=60, interval=1.0,
                          until=lambda done: "mrsegmentator" in done.stdout and "failed" in done.stdout,
                          what="the mrsegmentator job to fail")

    seg_file, sr_file = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg_file.write_bytes(results["SEG"][0])
    sr_file.write_bytes(results["SR"][0])
    found = _check_results("totalsegmentator-ct", seg_file, sr_file, chest)
    print(f"totalsegmentator-ct: {len(found)} of 117 structures present with random weights")
    assert status.returncode == 0, status.stderr
    job_lines = [line for line in status.stdout.splitlines() if "mrsegmentator" in line]
    assert any("failed" in line and f"{missing} does not exist" in line for line in job_lines), status.stdout


@pytest.mark.slow
def test_mrsegmentator_vista3d_and_the_merged_parts_come_back_from_orthanc_coded(
    tmp_path: Path, chest_ct_dir: Path, chest: Volume, orthanc_factory: Callable[..., Orthanc]
) -> None:
    models = tmp_path / "models"
    sections: dict[str, dict[str, Any]] = {"models": {}, "pipelines": {}}
    for preset in ("mrsegmentator", "vista3d"):
        for key, value in _sections(preset, BUILDERS[preset](models)).items():
            sections[key].update(value)
    names, registry = _part_registry(tmp_path / "parts")
    sections["models"].update({name: {**registry.config(name).model_dump(mode="json", exclude_defaults=True),
                                      "labels": "preset:totalsegmentator-ct"} for name in names})
    sections["pipelines"][PARTS_PRESET] = {"model": names}
    pipelines = {"mrsegmentator": "mrsegmentator", "vista3d": "vista3d", PARTS_PRESET: "totalsegmentator-ct"}
    pacs = orthanc_factory()
    node = RadnodeProcess.beside(
        pacs, tmp_path / "radnode",
        routes=[{"match": {"Modality": "CT"}, "pipelines": list(pipelines), "send_to": ["pacs"]}],
        extra=sections,
    )
    study_uid = pydicom.dcmread(next(chest_ct_dir.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID

    with node:
        pacs.upload_folder(chest_ct_dir)
        study_id = pacs.send_study("radnode", study_uid)
        results = pacs.wait_for_results(study_id, "three SEGs and three SRs in Orthanc", RESULT_TIMEOUT_S,
                                        count=len(pipelines))

    by_algorithm = {}
    for index, (seg_bytes, sr_bytes) in enumerate(_paired(results)):
        seg_file, sr_file = tmp_path / f"seg{index}.dcm", tmp_path / f"sr{index}.dcm"
        seg_file.write_bytes(seg_bytes)
        sr_file.write_bytes(sr_bytes)
        algorithm = pydicom.dcmread(seg_file, stop_before_pixels=True).SegmentSequence[0].SegmentAlgorithmName
        by_algorithm[algorithm] = (seg_file, sr_file)
    assert by_algorithm.keys() == {f"radnode {pipeline}" for pipeline in pipelines}
    for pipeline, table in pipelines.items():
        found = _check_results(table, *by_algorithm[f"radnode {pipeline}"], chest)
        print(f"{pipeline}: {len(found)} structures present with random weights")


def _paired(results: dict[str, list[bytes]]) -> list[tuple[bytes, bytes]]:
    """Each SEG with the SR that references it (TID 1500 names the SEG's SOP Instance UID)."""
    pairs = []
    for seg_bytes in results["SEG"]:
        uid = pydicom.dcmread(io.BytesIO(seg_bytes), stop_before_pixels=True).SOPInstanceUID
        (sr_bytes,) = [sr for sr in results["SR"] if uid.encode() in sr]
        pairs.append((seg_bytes, sr_bytes))
    return pairs
