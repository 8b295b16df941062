"""`logging.format: json`: one JSON object per line, message fields split out, no patient data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom

from dicom_sr.seg import build_seg
from node.ops.logs import JsonFormatter, TextFormatter
from tests.dcmtk import storescu
from tests.log_records import kept_log_records
from tests.node_process import RadnodeProcess
from tests.orthanc import wait_for
from tests.test_seg import multi_frame_body


def test_json_formatter_turns_key_value_pairs_into_fields() -> None:
    record = logging.LogRecord(
        "radnode.jobs", logging.INFO, __file__, 1,
        "job done job=%d pipeline=%s series=%s load_s=%.2f", (7, "lung-qct", "1.2.3", 0.5), None,
    )
    event = json.loads(JsonFormatter().format(record))
    assert event["level"] == "INFO" and event["logger"] == "radnode.jobs"
    assert event["message"] == "job done job=7 pipeline=lung-qct series=1.2.3 load_s=0.50"
    fields = (event["job"], event["pipeline"], event["series"], event["load_s"])
    assert fields == ("7", "lung-qct", "1.2.3", "0.50")
    assert event["ts"].endswith("+00:00")


def test_listener_logs_one_json_event_per_line_without_patient_data(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    node = RadnodeProcess(
        tmp_path / "radnode", destinations={}, routes=[], with_worker=False,
        extra={"logging": {"format": "json", "level": "DEBUG"}},
    )
    with node:
        sent = storescu("127.0.0.1", node.port, node.ae_title, [chest_ct_dir])
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: "series complete" in node.log_tail(), timeout=30, interval=0.5,
                 what="the series to complete")
    lines = [line for line in node.log_path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= event.keys() for event in events)
    listening = next(e for e in events if e["message"].startswith("listening"))
    assert listening["port"] == str(node.port) and listening["ae_title"] == node.ae_title
    stored = [e for e in events if e["message"].startswith("instance stored")]
    assert len(stored) == 64 and {e["calling_ae"] for e in stored} == {"DCMTKSCU"}
    complete = next(e for e in events if e["message"].startswith("series complete"))
    assert complete["instances"] == "64"
    header = pydicom.dcmread(next(chest_ct_dir.glob("*.dcm")), stop_before_pixels=True)
    text = node.log_path.read_text()
    for phi in {str(header.PatientName), str(header.PatientID)} - {""}:
        assert phi not in text


def test_a_value_with_a_newline_stays_on_its_event_s_line_in_both_formats() -> None:
    # a peer chooses the UIDs and AE titles that are logged: a newline must not forge a line
    record = logging.LogRecord("radnode.listener", logging.WARNING, __file__, 1,
                               "instance refused calling_ae=%s sop=%s",
                               ("EVIL", "1.2\nFAKE ERROR x=1\r"), None)
    text = TextFormatter("%(levelname)s %(message)s").format(record)
    assert text == "WARNING instance refused calling_ae=EVIL sop=1.2\\x0aFAKE ERROR x=1\\x0d"
    event = JsonFormatter().format(record)
    assert "\n" not in event and json.loads(event)["sop"] == "1.2\\x0aFAKE"


def test_building_results_at_info_level_logs_nothing_of_highdicom_s_narration() -> None:
    """highdicom logs "copy Patient-related attributes …" per module at INFO for every object; a
    node at `logging.level: INFO` shows radnode's events, not that."""
    headers, findings = multi_frame_body("enhanced-ct")
    with kept_log_records("INFO") as records:
        build_seg(findings, headers, series_number=9901, series_instance_uid=pydicom.uid.generate_uid(),
                  sop_instance_uid=pydicom.uid.generate_uid())
        logging.getLogger("radnode.jobs").info("job done job=1")

    assert [r.name for r in records] == ["radnode.jobs"]
