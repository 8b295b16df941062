"""The ``radnode`` command.

Exit codes: 0 success; 1 the command ran and failed (e.g. a send was refused); 2 the
configuration or the command line is wrong (the message names the key or option); 141 the reader
of the output went away (``radnode status | head``), as for any command killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from node.config import Config, load_config
from node.db import Database
from node.errors import BrokerUnreachable, ConfigError, DatabaseUnavailable, DeliveryError, NotRetryable
from node.ops.logs import configure_logging

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE
DEFAULT_CONFIG = Path("/etc/radnode/radnode.yaml")
SYSTEMD_UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
DEFAULT_UNIT_DEST = Path("/etc/systemd/system")


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the radnode YAML configuration (default: {DEFAULT_CONFIG})",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radnode",
        description="A DICOM node that runs AI pipelines on studies routed from a PACS and "
        "sends the results back as DICOM SEG and SR.",
        epilog="Exit codes: 0 ok, 1 failed, 2 bad configuration or usage, 141 output closed early.",
    )
    parser.add_argument("--version", action="version", version=_version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the DICOM listener (and optionally one worker)",
        description="Receive instances by C-STORE, store them durably, detect complete series, "
        "route them and queue their jobs. With --with-worker, also run one worker process "
        "(the embedded all-in-one node).",
    )
    _config_argument(serve)
    serve.add_argument("--with-worker", action="store_true", help="also run a worker process")

    worker = commands.add_parser(
        "worker", help="run a worker that executes jobs and delivers results",
        description="Take jobs from the broker one at a time, run their pipelines, write SEG "
        "and SR, and deliver them. Run one worker per GPU.",
    )
    _config_argument(worker)
    device = worker.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="run pipelines on the CPU")
    device.add_argument(
        "--gpu", type=int, metavar="N",
        help="run on GPU N (sets CUDA_VISIBLE_DEVICES=N for this process)",
    )
    worker.add_argument(
        "--hostname", metavar="NAME",
        help="this worker's name in Celery and in the jobs it runs (default: the host name); "
        "give each worker its own, e.g. gpu0@host",
    )
    worker.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="/metrics port when metrics are enabled (default: metrics.worker_port + GPU index)",
    )

    status = commands.add_parser(
        "status", help="show studies, series, jobs and deliveries",
        description="What arrived, what ran, and what was delivered, newest study first.",
    )
    _config_argument(status)
    status.add_argument("--limit", type=_at_least_one, default=20, metavar="N",
                        help="number of studies, newest first (default 20)")
    status.add_argument("--study", metavar="UID", help="only the study with this StudyInstanceUID")
    status.add_argument("--job", type=int, metavar="ID",
                        help="only the study of this job, with its deliveries and notifications")
    status.add_argument(
        "--failed", action="store_true", help="only studies with a failed job or a failed delivery"
    )
    status.add_argument(
        "--since", type=_since, metavar="WHEN",
        help="only studies that received instances since WHEN: 30m, 2h, 7d or an ISO date (UTC)",
    )

    retry = commands.add_parser(
        "retry", help="re-queue a failed job or a failed delivery",
        description="Put a failed (or not_applicable) job back on the queue as a new attempt, or "
        "a failed delivery with a fresh attempt budget. Ids are shown by `radnode status --failed`.",
    )
    _config_argument(retry)
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("job", type=int, nargs="?", metavar="JOB", help="the job id")
    target.add_argument("--delivery", type=int, metavar="ID", help="a delivery id instead of a job")

    units = commands.add_parser(
        "install-units", help="install the systemd units (as root)",
        description=f"Copy radnode's systemd units from {SYSTEMD_UNITS_DIR} to DEST and reload "
        "systemd. Then enable what this host runs (docs/install.md).",
    )
    units.add_argument("--dest", type=Path, default=DEFAULT_UNIT_DEST, help=f"default {DEFAULT_UNIT_DEST}")
    units.add_argument("--no-reload", action="store_true", help="do not run systemctl daemon-reload")

    config = commands.add_parser("config", help="configuration commands")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check", help="validate a configuration file without starting anything",
        description="Print 'ok' and exit 0, or print each problem (file:line: key: why) and "
        "exit 2.",
    )
    check.add_argument("file", type=Path, nargs="?", help="the file (or use --config)")
    _config_argument(check)

    model = commands.add_parser("model", help="model file commands")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    digest = model_commands.add_parser(
        "hash", help="print the SHA-256 of a model file or folder (for models.NAME.sha256)",
        description="Print the SHA-256 radnode checks a model against: of the file, or for a folder "
        "(MONAI bundle, nnU-Net results) over every file in it.",
    )
    digest.add_argument("path", type=Path, metavar="PATH")
    models_check = model_commands.add_parser(
        "check", help="open every configured model: present, SHA-256 as pinned, valid format",
        description="Open each model of the configuration's models: section without running it; "
        "print 'ok NAME' or the problem, and exit 1 if any model cannot be used.",
    )
    _config_argument(models_check)

    send = commands.add_parser(
        "send", help="send DICOM files or folders to the node (or to a destination)",
        description="C-STORE files to this node's listener (default) or to a configured "
        "destination: a quick way to try the node with a demo study.",
    )
    _config_argument(send)
    send.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    send.add_argument("--to", metavar="DESTINATION", help="a destination name from the config")
    send.add_argument("--host", default="127.0.0.1", help="the node's host (default 127.0.0.1)")

    route = commands.add_parser(
        "route", help="show which pipelines a series on disk would get, and why",
        description="Apply the configured routes to the series in PATH (a file, or a folder: "
        "each series in it) without storing or running anything: every rule, whether it "
        "matched or excluded, the verdict of each condition, and the resulting pipelines "
        "with their destinations.",
    )
    _config_argument(route)
    route.add_argument("--dry-run", action="store_true", required=True,
                       help="required: nothing is stored or queued")
    route.add_argument("path", type=Path, metavar="PATH")
    route.add_argument("--calling-ae-title", default="", metavar="AET",
                       help="the sender's AE title, for routes that match calling_ae_title")
    route.add_argument("--called-ae-title", default="", metavar="AET",
                       help="the AE title called, for routes that match called_ae_title")

    database = commands.add_parser(
        "db", help="database schema commands",
        description="The schema is versioned (Alembic revisions shipped with radnode); every radnode "
        "process upgrades it at start, so these are for doing it ahead of a start, or checking.",
    )
    db_commands = database.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_upgrade = db_commands.add_parser(
        "upgrade", help="upgrade the database schema to this version's newest revision",
        description="Create the schema in an empty database, or upgrade it to the newest revision "
        "(a database from before revisions is stamped with the one it has first). Safe while other "
        "radnode processes start. Exit 0 when at the newest revision (also when nothing had to be "
        "done), 1 when the database cannot be opened or upgraded.",
    )
    _config_argument(db_upgrade)
    db_current = db_commands.add_parser(
        "current", help="print the database schema's revision",
        description="Print the revision the database is at, and whether it is the newest this "
        "version knows. Exit 0 at the newest, 1 when it needs `radnode db upgrade` or cannot be "
        "opened.",
    )
    _config_argument(db_current)
    return parser


def _version_line() -> str:
    """radnode's version and those of the DICOM libraries it runs on (what a support call asks)."""
    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"
    parts = ", ".join(f"{name} {of(name)}" for name in ("pynetdicom", "pydicom", "highdicom"))
    return f"radnode {of('radnode')} ({parts})"


def _at_least_one(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return number


def _since(text: str) -> datetime:
    from node.ops.status import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # what was printed went nowhere; point stdout at /dev/null so the exit's flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "install-units":
        return _install_units(args.dest, reload=not args.no_reload)
    if args.command == "model" and args.model_command == "hash":
        return _model_hash(args.path)
    try:
        if args.command == "config":
            return _config_check(args.file or args.config)
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"radnode: configuration error in {args.config}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.logging)
    try:
        return _COMMANDS[args.command](config, args)
    except DatabaseUnavailable as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _open_database(config: Config) -> Database:
    """The configured database with its schema, or DatabaseUnavailable saying which and why."""
    from sqlalchemy.exc import SQLAlchemyError

    db = Database(config.database.url)
    try:
        db.create_schema()
    except SQLAlchemyError as exc:
        shown = db.engine.url.render_as_string(hide_password=True)
        raise DatabaseUnavailable(
            f"cannot open the database {shown}: {getattr(exc, 'orig', None) or exc}"
            " (has `radnode serve` run with this configuration?)"
        ) from exc
    return db


def _config_check(path: Path) -> int:
    try:
        load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    print("ok")
    return EXIT_OK


def _serve(config: Config, args: argparse.Namespace) -> int:
    from node.ops.service import serve

    try:
        serve(config, with_worker=args.with_worker)
    except ConfigError as exc:  # found only when used, e.g. a node.tls file that cannot be loaded
        for problem in exc.problems:
            print(f"radnode: configuration error in {args.config}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        logging.getLogger("radnode").error(
            "cannot listen on %s:%d: %s", config.node.bind_address, config.node.port, exc
        )
        return EXIT_FAILURE
    return EXIT_OK


def _worker(config: Config, args: argparse.Namespace) -> int:
    import os

    from node.jobs.worker import run_worker
    from node.ops.service import prepare_paths

    device = config.worker.device
    metrics_port = args.metrics_port or config.metrics.worker_port + (args.gpu or 0)
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
        device = "cuda"
    elif args.cpu:
        device = "cpu"
    prepare_paths(config)
    run_worker(config, device=device, hostname=args.hostname, metrics_port=metrics_port)
    return EXIT_OK


def _status(config: Config, args: argparse.Namespace) -> int:
    from node.ops.status import StudyFilter, render_status

    db = _open_database(config)
    selection = StudyFilter(limit=args.limit, study_uid=args.study, failed=args.failed, since=args.since,
                            job_id=args.job)
    print(render_status(db, selection))
    return EXIT_OK


def _retry(config: Config, args: argparse.Namespace) -> int:
    from node.jobs.tasks import Enqueuer, create_app
    from node.ops.retry import retry_delivery, retry_job

    db = _open_database(config)
    enqueuer = Enqueuer(create_app(config))
    try:
        if args.delivery is not None:
            retry_delivery(db, enqueuer, args.delivery)
            print(f"delivery {args.delivery} re-queued")
        else:
            retry_job(db, enqueuer, args.job)
            print(f"job {args.job} re-queued")
    except NotRetryable as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokerUnreachable as exc:  # the row was put back as it was
        print(f"radnode: {exc}; nothing changed, retry again when the broker is up", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _install_units(dest: Path, *, reload: bool) -> int:
    import shutil
    import subprocess

    units = sorted(p for p in SYSTEMD_UNITS_DIR.glob("radnode*") if p.suffix in (".service", ".target"))
    if not units:
        print(f"radnode: no unit files in {SYSTEMD_UNITS_DIR}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for unit in units:
            shutil.copyfile(unit, dest / unit.name)
            (dest / unit.name).chmod(0o644)
    except OSError as exc:
        print(f"radnode: cannot write units to {dest}: {exc} (run as root)", file=sys.stderr)
        return EXIT_FAILURE
    print("installed " + " ".join(unit.name for unit in units) + f" in {dest}")
    if reload and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    print("next: systemctl enable --now radnode-listener radnode-worker@0 (or radnode-worker-cpu)")
    return EXIT_OK


def _model_hash(path: Path) -> int:
    from inference.formats import model_sha256

    if not path.exists():
        print(f"radnode: {path} does not exist", file=sys.stderr)
        return EXIT_USAGE
    print(model_sha256(path))
    return EXIT_OK


def _model_check(config: Config, args: argparse.Namespace) -> int:
    from inference.errors import ModelError
    from inference.formats import open_model

    failed = 0
    for name, model in config.models.items():
        try:
            open_model(name, model)
        except ModelError as exc:
            print(f"FAILED {name}: {exc}")
            failed += 1
        else:
            print(f"ok {name}")
    return EXIT_FAILURE if failed else EXIT_OK


def _send(config: Config, args: argparse.Namespace) -> int:
    from node.config import Destination
    from node.delivery.send import send_files, stow_files

    if args.to:
        if args.to not in config.destinations:
            print(f"radnode: no destination {args.to!r} in {args.config}", file=sys.stderr)
            return EXIT_USAGE
        target = config.destinations[args.to]
    else:
        target = Destination(ae_title=config.node.ae_title, host=args.host, port=config.node.port)
    files = _dicom_files(args.paths)
    if not files:
        print("radnode: no DICOM files found in the given paths", file=sys.stderr)
        return EXIT_USAGE
    try:
        if target.kind == "dicomweb":
            stow_files(target, files, timeout_seconds=60)
        else:
            send_files(target, files, calling_ae_title="RADNODE-SEND", timeout_seconds=60)
    except DeliveryError as exc:
        print(f"radnode: send failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    where = target.url if target.kind == "dicomweb" else f"{target.ae_title}@{target.host}:{target.port}"
    print(f"sent {len(files)} instance(s) to {where}")
    return EXIT_OK


def _route(config: Config, args: argparse.Namespace) -> int:
    from pydicom import dcmread

    from node.jobs.routing import SeriesFacts, describe

    files = _dicom_files([args.path])
    if not files:
        print(f"radnode: no DICOM files found in {args.path}", file=sys.stderr)
        return EXIT_USAGE
    first_of_series: dict[str, Path] = {}
    for path in files:
        header = dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        first_of_series.setdefault(str(header.get("SeriesInstanceUID", "")), path)
    for series_uid, path in first_of_series.items():
        facts = SeriesFacts(
            dcmread(path, stop_before_pixels=True), args.calling_ae_title, args.called_ae_title
        )
        print(f"series {series_uid or '(no SeriesInstanceUID)'} (first file {path})")
        print(describe(config.routes, facts, config.pipelines))
    return EXIT_OK


def _dicom_files(paths: Sequence[Path]) -> list[Path]:
    """The DICOM Part 10 files among ``paths`` and under the folders among them, sorted."""
    files = sorted(
        f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()
    )
    return [f for f in files if _is_dicom(f)]


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _db(config: Config, args: argparse.Namespace) -> int:
    """``radnode db upgrade`` and ``radnode db current``."""
    from sqlalchemy.exc import SQLAlchemyError

    from node.db import head_revision

    db = Database(config.database.url)
    try:
        if args.db_command == "upgrade":
            before, head = db.upgrade()
            print(f"database schema at {head}, nothing to do" if before == head
                  else f"database schema upgraded from {before or 'an empty database'} to {head}")
            return EXIT_OK
        head = head_revision()
        current = db.current_revision()
        if current is None:
            legacy = db.legacy_revision()
            print("none: an empty database (`radnode db upgrade` creates the schema)" if legacy is None
                  else f"none: tables from before revisions, at {legacy} (`radnode db upgrade` stamps them)")
            return EXIT_FAILURE
        if current != head:
            print(f"{current} (newest is {head}: run `radnode db upgrade`)")
            return EXIT_FAILURE
        print(f"{current} (newest)")
        return EXIT_OK
    except SQLAlchemyError as exc:
        shown = db.engine.url.render_as_string(hide_password=True)
        raise DatabaseUnavailable(f"cannot open the database {shown}: {getattr(exc, 'orig', None) or exc}"
                                  ) from exc
    finally:
        db.dispose()


_COMMANDS = {
    "serve": _serve, "worker": _worker, "status": _status, "send": _send, "retry": _retry,
    "route": _route, "model": _model_check, "db": _db,
}

if __name__ == "__main__":
    sys.exit(main())
