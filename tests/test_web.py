"""The status page of a real listener process, read by urllib and rendered by headless Chromium.

A real chest CT arrives by DCMTK storescu (so the page has a study that came with patient data),
and catalog rows add a failed job and a failed delivery. Chromium (Debian `chromium`) renders the
page to a PNG that a person looks at; the rendered DOM is checked here.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest

from node.config import WebConfig, load_config
from node.db import Database, DeliveryState, JobState, utcnow
from tests.catalog_rows import add_study
from tests.dcmtk import storescu
from tests.node_process import RadnodeProcess
from tests.orthanc import wait_for
from tests.ports import free_port

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--window-size=1400,1100",
]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[RadnodeProcess, str, dict[str, str]]:
    """A listener serving its page, one real CT study received, two problem studies in rows."""
    root = tmp_path_factory.mktemp("web")
    chest_ct_dir = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"
    web_port = free_port()
    node = RadnodeProcess(
        root / "radnode", destinations={}, routes=[], with_worker=False,
        extra={"web": {"enabled": True, "port": web_port}},
    )
    with node:
        sent = storescu("127.0.0.1", node.port, node.ae_title, [chest_ct_dir])
        assert sent.returncode == 0, sent.stderr
        config = load_config(node.config_path)
        db = Database(config.database.url)
        now = utcnow()
        failed_job = add_study(
            db, config.storage.path, config.storage.results_dir, received_at=now - timedelta(minutes=30),
            job_state=JobState.FAILED, reason="volume error: slice spacing varies by 2.5 mm",
        )
        failed_delivery = add_study(
            db, config.storage.path, config.storage.results_dir, received_at=now - timedelta(minutes=5),
            deliveries=(DeliveryState.SENT, DeliveryState.FAILED),
        )
        db.dispose()
        url = f"http://127.0.0.1:{web_port}/"
        header = pydicom.dcmread(next(chest_ct_dir.glob("*.dcm")), stop_before_pixels=True)
        facts = {
            "ct_study": header.StudyInstanceUID,
            "failed_job_study": failed_job.study_uid,
            "failed_delivery_study": failed_delivery.study_uid,
            "patient_name": str(header.PatientName),
            "patient_id": str(header.PatientID),
        }
        wait_for(lambda: facts["ct_study"] in _get(url), timeout=30, interval=0.5,
                 what="the received study on the status page")
        yield node, url, facts


def test_page_lists_recent_studies_jobs_deliveries_and_health(
    page: tuple[RadnodeProcess, str, dict[str, str]],
) -> None:
    _, url, facts = page
    html = _get(url)
    for uid in (facts["ct_study"], facts["failed_job_study"], facts["failed_delivery_study"]):
        assert uid in html
    assert "slice spacing varies by 2.5 mm" in html
    assert "connection refused" in html and 'class="failed"' in html
    assert "queue depth (jobs queued)" in html and "spool free" in html and "GiB" in html
    assert "gpu0@test" in html  # the worker that ran the rows' jobs
    if shutil.which("nvidia-smi") is None:
        assert "no GPU on this host" in html


def test_page_never_shows_patient_name_or_id(page: tuple[RadnodeProcess, str, dict[str, str]]) -> None:
    _, url, facts = page
    html = _get(url)
    for phi in {facts["patient_name"], facts["patient_id"]} - {""}:
        assert phi not in html


def test_page_is_read_only_and_local_by_default(page: tuple[RadnodeProcess, str, dict[str, str]]) -> None:
    _, url, _ = page
    assert WebConfig().bind == "127.0.0.1" and WebConfig().enabled is False
    request = urllib.request.Request(url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 501
    assert _get(url + "healthz") == "ok"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (scripts/test.sh installs it)")
def test_page_renders_in_headless_chromium(
    page: tuple[RadnodeProcess, str, dict[str, str]], tmp_path: Path
) -> None:
    _, url, facts = page
    screenshot = tmp_path / "status-page.png"
    profile = tmp_path / "chromium-profile"
    shot = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}", url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h2>Recent studies</h2>" in dom.stdout and facts["failed_job_study"] in dom.stdout
    print(f"status page screenshot: {screenshot}")
