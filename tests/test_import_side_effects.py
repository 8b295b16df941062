"""Importing radnode changes nothing outside it: metrics, pynetdicom and logging are set up at start-up.

Each check runs in a fresh interpreter, so what another test imported or configured cannot hide
(or fake) an import-time side effect.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.exc import OperationalError

from node.config import load_config
from node.db import Database
from node.jobs.tasks import DELIVER, RUN_JOB, Enqueuer, create_app
from node.jobs.worker import WorkerContext, deliver, run_job, worker_app
from node.metrics import LISTENER, WORKER, role_registry
from tests.fresh_python import run_fresh

_IMPORT_EVERYTHING = """
import importlib, json, logging, pkgutil, sys
# the libraries first: what they do when imported is theirs (celery adds a handler of its own)
import celery, celery.signals, celery.utils.log, highdicom, kombu, pydicom, pynetdicom, sqlalchemy, torch
from prometheus_client import REGISTRY
import pynetdicom._config as cfg

def state():
    return {
        "pynetdicom": {k: repr(v) for k, v in vars(cfg).items() if k.isupper()},
        "logging": {name: (logging.getLogger(name).level, len(logging.getLogger(name).handlers))
                    for name in ("", "pynetdicom", "highdicom", "radnode", "celery")},
        "metrics": sorted(REGISTRY._names_to_collectors),
    }

before = state()
imported, skipped = [], {}
for package in ("dicom_sr", "inference", "node"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:  # an optional engine that is not installed (tensorrt)
            skipped[info.name] = str(exc)
            continue
        imported.append(info.name)
print(json.dumps({"before": before, "after": state(), "imported": imported, "skipped": skipped}))
"""


def test_importing_every_module_leaves_metrics_pynetdicom_and_logging_untouched() -> None:
    run = run_fresh(_IMPORT_EVERYTHING)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert "node.ops.cli" in report["imported"] and "node.jobs.worker" in report["imported"]
    assert set(report["skipped"]) <= {"inference.backends.tensorrt_backend"}, report["skipped"]
    assert report["after"] == report["before"]
    assert not [name for name in report["after"]["metrics"] if name.startswith("radnode")]


def test_senders_import_the_task_names_without_torch() -> None:
    # the listener and the CLI put ids on the broker; only the worker needs torch
    run = run_fresh("import sys; sys.modules['torch'] = None\n"
                        "import node.jobs.tasks, node.ops.service, node.ops.retry")
    assert run.returncode == 0, run.stderr


def test_each_process_role_exports_only_its_own_metric_families() -> None:
    def families(registry: object) -> set[str]:
        return {metric.name for metric in registry.collect()}  # type: ignore[attr-defined]

    listener, worker = families(role_registry(LISTENER)), families(role_registry(WORKER))
    assert {"radnode_instances_received", "radnode_received_bytes"} <= listener
    assert {"radnode_jobs_finished", "radnode_delivery_attempts"} <= worker
    radnode = {name for name in listener | worker if name.startswith("radnode")}
    assert not (listener & worker & radnode), "a family exported by both roles"
    # a role's registry can be built again (a restarted server thread): nothing registers twice
    assert families(role_registry(WORKER)) == worker
    assert "process_resident_memory_bytes" in worker


def test_worker_app_registers_both_named_tasks_bound_to_the_context(tmp_path: Path) -> None:
    config_file = tmp_path / "radnode.yaml"
    config_file.write_text(f"storage:\n  path: {tmp_path / 'spool'}\n"
                           f"database:\n  url: sqlite:///{tmp_path / 'radnode.db'}\n"
                           f"broker:\n  url: sqla+sqlite:///{tmp_path / 'broker.db'}\n")
    config = load_config(config_file)
    db = Database(config.database.url)
    runner = None  # the tasks are only registered here, never run
    context = WorkerContext(config, db, runner, Enqueuer(create_app(config)))  # type: ignore[arg-type]
    app = worker_app(context)
    for name, function in ((RUN_JOB, run_job), (DELIVER, deliver)):
        task = app.tasks[name]
        # Celery wraps the function in its autoretry loop: a database outage re-sends, never drops
        assert task.run.__wrapped__.__func__ is function
        assert task.autoretry_for == (OperationalError,) and task.max_retries is None
    assert app.tasks[RUN_JOB].context is context and app.tasks[DELIVER].context is context
    # senders' apps carry no tasks of radnode: they only put ids on the broker
    assert not [name for name in create_app(config).tasks if name.startswith("radnode.")]
