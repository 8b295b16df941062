"""The ``radnode`` command.

Exit codes: 0 success; 1 the command ran and failed (e.g. a send was refused); 2 the
configuration or the command line is wrong (the message names the key or option).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from node.config import Config, load_config
from node.errors import ConfigError, DeliveryError
from node.logs import configure_logging

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_CONFIG = Path("/etc/radnode/radnode.yaml")


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
        epilog="Exit codes: 0 ok, 1 failed, 2 bad configuration or usage.",
    )
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

    status = commands.add_parser(
        "status", help="show studies, series, jobs and deliveries",
        description="What arrived, what ran, and what was delivered, newest study first.",
    )
    _config_argument(status)
    status.add_argument("--limit", type=int, default=20, help="number of studies (default 20)")

    config = commands.add_parser("config", help="configuration commands")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check", help="validate a configuration file without starting anything",
        description="Print 'ok' and exit 0, or print each problem (file:line: key: why) and "
        "exit 2.",
    )
    check.add_argument("file", type=Path, nargs="?", help="the file (or use --config)")
    _config_argument(check)

    send = commands.add_parser(
        "send", help="send DICOM files or folders to the node (or to a destination)",
        description="C-STORE files to this node's listener (default) or to a configured "
        "destination: a quick way to try the node with a demo study.",
    )
    _config_argument(send)
    send.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    send.add_argument("--to", metavar="DESTINATION", help="a destination name from the config")
    send.add_argument("--host", default="127.0.0.1", help="the node's host (default 127.0.0.1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
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
    return _COMMANDS[args.command](config, args)


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
    from node.service import serve

    try:
        serve(config, with_worker=args.with_worker)
    except OSError as exc:
        logging.getLogger("radnode").error(
            "cannot listen on %s:%d: %s", config.node.bind_address, config.node.port, exc
        )
        return EXIT_FAILURE
    return EXIT_OK


def _worker(config: Config, args: argparse.Namespace) -> int:
    import os

    from node.service import prepare_paths
    from node.tasks import run_worker

    device = config.worker.device
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
        device = "cuda"
    elif args.cpu:
        device = "cpu"
    prepare_paths(config)
    run_worker(config, device=device)
    return EXIT_OK


def _status(config: Config, args: argparse.Namespace) -> int:
    from node.db import Database
    from node.status import render_status

    db = Database(config.database.url)
    db.create_schema()
    print(render_status(db, limit=args.limit))
    return EXIT_OK


def _send(config: Config, args: argparse.Namespace) -> int:
    from node.config import Destination
    from node.delivery import send_files

    if args.to:
        if args.to not in config.destinations:
            print(f"radnode: no destination {args.to!r} in {args.config}", file=sys.stderr)
            return EXIT_USAGE
        target = config.destinations[args.to]
    else:
        target = Destination(ae_title=config.node.ae_title, host=args.host, port=config.node.port)
    files = sorted(
        f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()
    )
    files = [f for f in files if _is_dicom(f)]
    if not files:
        print("radnode: no DICOM files found in the given paths", file=sys.stderr)
        return EXIT_USAGE
    try:
        send_files(target, files, calling_ae_title="RADNODE-SEND", timeout_seconds=60)
    except DeliveryError as exc:
        print(f"radnode: send failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"sent {len(files)} instance(s) to {target.ae_title}@{target.host}:{target.port}")
    return EXIT_OK


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


_COMMANDS = {"serve": _serve, "worker": _worker, "status": _status, "send": _send}

if __name__ == "__main__":
    sys.exit(main())
