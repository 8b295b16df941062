"""`radnode status` filters and `radnode retry`, run as the admin runs them (the real command)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from node.config import load_config
from node.db import Database, Delivery, DeliveryState, Job, JobState, utcnow
from node.ops.status import parse_since
from tests.catalog_rows import StudyRows, add_study
from tests.node_process import radnode_cli
from tests.ports import free_port


class Site:
    """A config file, its database with three studies, and its (embedded, file) broker."""

    def __init__(self, root: Path, broker_url: str = "sqla+sqlite:///./broker.db") -> None:
        self.config_path = root / "radnode.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "storage": {"path": "./spool"},
            "database": {"url": "sqlite:///./radnode.db"},
            "broker": {"url": broker_url},
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
        }))
        config = load_config(self.config_path)
        self.broker_file = root / "broker.db"
        self.db = Database(config.database.url)
        self.db.create_schema()
        now = utcnow()
        spool, results = config.storage.path, config.storage.results_dir
        self.old_ok = add_study(self.db, spool, results, received_at=now - timedelta(days=3))
        self.failed_job = add_study(
            self.db, spool, results, received_at=now - timedelta(hours=5),
            job_state=JobState.FAILED, reason="volume error: slices not evenly spaced",
        )
        self.failed_delivery = add_study(
            self.db, spool, results, received_at=now - timedelta(minutes=10),
            deliveries=(DeliveryState.SENT, DeliveryState.FAILED),
        )

    def run(self, *args: str) -> tuple[int, str, str]:
        done = radnode_cli(*args, "--config", str(self.config_path))
        return done.returncode, done.stdout, done.stderr

    def queued_messages(self) -> int:
        """Messages waiting in the embedded broker (kombu's SQLAlchemy transport table)."""
        with closing(sqlite3.connect(self.broker_file)) as connection:
            try:
                return connection.execute("SELECT count(*) FROM kombu_message WHERE visible").fetchone()[0]
            except sqlite3.OperationalError:  # no table yet: kombu creates it with the first message
                return 0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(tmp_path_factory.mktemp("site"))


def _shown(output: str, *studies: StudyRows) -> list[bool]:
    return [study.study_uid in output for study in studies]


def test_status_without_filters_lists_every_study_newest_first(site: Site) -> None:
    code, out, _ = site.run("status")
    assert code == 0
    positions = [out.index(s.study_uid) for s in (site.failed_delivery, site.failed_job, site.old_ok)]
    assert positions == sorted(positions)
    assert "on gpu0@test" in out


def test_status_failed_shows_failed_jobs_and_failed_deliveries_only(site: Site) -> None:
    code, out, _ = site.run("status", "--failed")
    assert code == 0
    assert _shown(out, site.old_ok, site.failed_job, site.failed_delivery) == [False, True, True]
    assert "slices not evenly spaced" in out
    assert f"(delivery {site.failed_delivery.delivery_ids[1]})" in out


def test_status_since_takes_a_duration_or_an_iso_date(site: Site) -> None:
    _, last_hour, _ = site.run("status", "--since", "1h")
    assert _shown(last_hour, site.old_ok, site.failed_job, site.failed_delivery) == [False, False, True]
    since = (utcnow() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    _, last_day, _ = site.run("status", "--since", since)
    assert _shown(last_day, site.old_ok, site.failed_job, site.failed_delivery) == [False, True, True]


def test_status_study_shows_that_study_alone(site: Site) -> None:
    _, out, _ = site.run("status", "--study", site.old_ok.study_uid)
    assert _shown(out, site.old_ok, site.failed_job, site.failed_delivery) == [True, False, False]
    _, none, _ = site.run("status", "--study", "1.2.3.4")
    assert none.strip() == "no studies match"


def test_status_rejects_an_unreadable_since_with_usage_exit_code(site: Site) -> None:
    code, _, err = site.run("status", "--since", "yesterday")
    assert code == 2 and "neither a duration" in err


def test_parse_since_reads_durations_and_dates_as_utc() -> None:
    now = utcnow()
    assert parse_since("90m", now=now) == now - timedelta(minutes=90)
    assert parse_since("2d", now=now) == now - timedelta(days=2)
    assert parse_since("2026-01-31").isoformat() == "2026-01-31T00:00:00+00:00"
    assert parse_since("2026-01-31T08:00+01:00").isoformat() == "2026-01-31T08:00:00+01:00"


def test_retry_requeues_a_failed_job_as_a_new_attempt(site: Site) -> None:
    before = site.queued_messages()
    code, out, err = site.run("retry", str(site.failed_job.job_id))
    assert code == 0, err
    assert out.strip() == f"job {site.failed_job.job_id} re-queued"
    with site.db.session() as session:
        job = session.get(Job, site.failed_job.job_id)
        assert (job.state, job.reason, job.finished_at) == (JobState.QUEUED, "", None)
    assert site.queued_messages() == before + 1


def test_retry_delivery_requeues_a_failed_delivery_with_a_fresh_budget(site: Site) -> None:
    delivery_id = site.failed_delivery.delivery_ids[1]
    before = site.queued_messages()
    code, _, err = site.run("retry", "--delivery", str(delivery_id))
    assert code == 0, err
    with site.db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)
    assert site.queued_messages() == before + 1


def test_retry_refuses_what_is_not_failed_and_says_why(site: Site) -> None:
    code, _, err = site.run("retry", str(site.old_ok.job_id))
    assert code == 1 and "is succeeded; only failed or not_applicable jobs are retried" in err
    code, _, err = site.run("retry", "--delivery", str(site.old_ok.delivery_ids[0]))
    assert code == 1 and "only failed deliveries are retried" in err
    code, _, err = site.run("retry", "999999")
    assert code == 1 and "does not exist" in err


def test_retry_with_the_broker_down_changes_nothing_and_says_so(tmp_path: Path) -> None:
    site = Site(tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    code, _, err = site.run("retry", str(site.failed_job.job_id))
    assert code == 1 and "nothing changed" in err
    with site.db.session() as session:
        job = session.get(Job, site.failed_job.job_id)
        assert (job.state, job.reason) == (JobState.FAILED, "volume error: slices not evenly spaced")


def test_status_on_a_database_that_cannot_be_opened_says_which_with_exit_code_1(tmp_path: Path) -> None:
    config_path = tmp_path / "radnode.yaml"
    config_path.write_text(yaml.safe_dump({
        "storage": {"path": "./spool"},
        "database": {"url": "sqlite:///./never/created/radnode.db"},
        "broker": {"url": "sqla+sqlite:///./broker.db"},
    }))
    done = radnode_cli("status", "--config", str(config_path))
    assert done.returncode == 1
    assert "cannot open the database" in done.stderr and "never/created/radnode.db" in done.stderr
    assert "Traceback" not in done.stderr


def test_status_into_a_reader_that_went_away_exits_141_without_a_traceback(site: Site) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "node.ops.cli", "status", "--config", str(site.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as reader_gone:
        assert reader_gone.stdout is not None and reader_gone.stderr is not None
        reader_gone.stdout.close()  # `| head` that has read its lines
        stderr = reader_gone.stderr.read().decode()
        assert reader_gone.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr


@pytest.mark.parametrize("limit", ["0", "-1", "many"])
def test_status_refuses_a_limit_that_is_not_a_positive_whole_number(site: Site, limit: str) -> None:
    code, out, err = site.run("status", "--limit", limit)
    assert code == 2 and out == ""
    assert "--limit" in err and "not a whole number of at least 1" in err


def test_version_names_radnode_and_the_dicom_libraries_it_runs_on() -> None:
    done = radnode_cli("--version")
    assert done.returncode == 0
    assert re.fullmatch(r"radnode \S+ \(pynetdicom \S+, pydicom \S+, highdicom \S+\)\n",
                        done.stdout), done.stdout
