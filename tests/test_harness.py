"""The test harness itself works against real processes: Orthanc, DCMTK echoscu/storescu/storescp."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.dcmtk import StoreSCP, echoscu, storescu
from tests.orthanc import Orthanc, OrthancError, wait_for


def _first_slice(chest_ct_dir: Path) -> Path:
    return sorted(chest_ct_dir.glob("*.dcm"))[0]


def test_orthanc_answers_echoscu_from_an_unknown_calling_ae(orthanc: Orthanc) -> None:
    result = echoscu(orthanc.host, orthanc.dicom_port, orthanc.aet, calling_aet="NOBODY")

    assert result.returncode == 0, result.stderr


def test_orthanc_rejects_an_association_addressed_to_another_ae_title(orthanc: Orthanc) -> None:
    result = echoscu(orthanc.host, orthanc.dicom_port, "NOT_ORTHANC")

    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr + result.stdout


def test_orthanc_upload_is_stored_byte_for_byte_and_found_by_study_uid(
    orthanc: Orthanc, chest_ct_dir: Path
) -> None:
    path = _first_slice(chest_ct_dir)
    source = pydicom.dcmread(path)

    instance_id = orthanc.upload(path)

    study_id = orthanc.find_study(source.StudyInstanceUID)
    assert study_id is not None and orthanc.study_ids() == [study_id]
    [series] = orthanc.series_of_study(study_id)
    assert series["MainDicomTags"]["Modality"] == "CT"
    assert series["MainDicomTags"]["SeriesInstanceUID"] == source.SeriesInstanceUID
    [instance] = orthanc.instances_of_series(series["ID"])
    assert instance["ID"] == instance_id
    assert orthanc.download_instance(instance_id) == path.read_bytes()
    assert orthanc.find_study("1.2.3.4.5.6.7.8.9") is None


def test_orthanc_upload_folder_skips_non_dicom_files(orthanc: Orthanc, chest_ct_dir: Path) -> None:
    expected = len(list(chest_ct_dir.glob("*.dcm")))
    assert (chest_ct_dir / "LICENSE.TCIA.txt").exists()

    ids = orthanc.upload_folder(chest_ct_dir)

    assert len(set(ids)) == expected
    [study_id] = orthanc.study_ids()
    [series] = orthanc.series_of_study(study_id)
    assert len(series["Instances"]) == expected


def test_orthanc_sends_a_ct_slice_to_storescp_unchanged(
    orthanc: Orthanc, chest_ct_dir: Path, tmp_path: Path
) -> None:
    path = _first_slice(chest_ct_dir)
    source = pydicom.dcmread(path)
    instance_id = orthanc.upload(path)

    with StoreSCP(tmp_path / "received", aet="INDEPENDENT") as scp:
        orthanc.add_modality("independent", scp.aet, scp.host, scp.port)
        orthanc.echo("independent")
        summary = orthanc.send_to_modality("independent", [instance_id], timeout=30)
        [received] = wait_for(scp.received, timeout=10, what="storescp to write the instance")

    assert summary["InstancesCount"] == 1
    copy = pydicom.dcmread(received)
    assert copy.SOPInstanceUID == source.SOPInstanceUID
    assert copy.PixelData == source.PixelData


def test_storescu_stores_a_series_in_orthanc(orthanc: Orthanc, chest_ct_dir: Path) -> None:
    expected = len(list(chest_ct_dir.glob("*.dcm")))

    result = storescu(orthanc.host, orthanc.dicom_port, orthanc.aet, [chest_ct_dir], calling_aet="RADNODE")

    assert result.returncode == 0, result.stderr
    [study_id] = orthanc.study_ids()
    [series] = orthanc.series_of_study(study_id)
    assert len(series["Instances"]) == expected


def test_send_to_an_unreachable_modality_raises_with_orthancs_reason(
    orthanc: Orthanc, chest_ct_dir: Path
) -> None:
    instance_id = orthanc.upload(_first_slice(chest_ct_dir))
    orthanc.add_modality("nowhere", "NOWHERE", "127.0.0.1", 1)

    with pytest.raises(OrthancError, match="NOWHERE"):
        orthanc.send_to_modality("nowhere", [instance_id], timeout=5)


def test_wait_for_reports_what_it_last_saw_on_timeout() -> None:
    with pytest.raises(AssertionError, match=r"waiting for two studies; last saw: \['only-one'\]"):
        wait_for(
            lambda: ["only-one"], timeout=0.2, interval=0.05, until=lambda s: len(s) == 2, what="two studies"
        )


def test_orthanc_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    pacs = Orthanc(tmp_path, modalities={"bad": ("RADNODE", "127.0.0.1", -1)}, start_timeout_s=10)

    with pytest.raises(OrthancError, match=r"(?s)exited with status .*TCP port number must be in range"):
        pacs.start()
    assert not pacs.running
