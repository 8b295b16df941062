"""The configuration contract: the issue's file is accepted as it is; mistakes name key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import load_config, parse_config
from node.errors import ConfigError
from tests.node_process import radnode_cli

CONTRACT = """\
node:
  ae_title: RADNODE
  port: 11112
storage:
  path: ./var/spool
database:
  url: sqlite:///./var/radnode.db
broker:
  url: sqla+sqlite:///./var/broker.db
completion:
  quiet_seconds: 5
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
routes:
  - match: {Modality: CT}
    pipelines: [lung-qct]
    send_to: [pacs]
"""

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "radnode.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_contract_file_is_accepted_and_relative_paths_resolve_against_its_folder(
    tmp_path: Path,
) -> None:
    config = load_config(_write(tmp_path, CONTRACT))
    folder = (tmp_path / "conf").resolve()
    assert config.node.ae_title == "RADNODE" and config.node.port == 11112
    assert config.storage.path == folder / "var" / "spool"
    assert config.database.url == f"sqlite:///{folder}/var/radnode.db"
    assert config.broker.url == f"sqla+sqlite:///{folder}/var/broker.db"
    assert config.completion.quiet_seconds == 5
    assert config.destinations["pacs"].port == 4242
    assert config.routes[0].pipelines == ["lung-qct"]


@pytest.mark.parametrize(
    ("database", "broker"),
    [
        ("postgresql://radnode@db.example/radnode", "redis://broker.example:6379/0"),
        ("postgresql+psycopg2://radnode:secret@db/radnode", "amqp://guest:guest@mq:5672//"),
    ],
)
def test_production_urls_are_taken_unchanged(tmp_path: Path, database: str, broker: str) -> None:
    text = CONTRACT.replace("sqlite:///./var/radnode.db", database).replace(
        "sqla+sqlite:///./var/broker.db", broker
    )
    config = load_config(_write(tmp_path, text))
    assert (config.database.url, config.broker.url) == (database, broker)


def test_redis_visibility_timeout_and_worker_memory_bound_reach_celery(tmp_path: Path) -> None:
    from node.jobs.tasks import create_app

    text = CONTRACT.replace("sqla+sqlite:///./var/broker.db", "redis://broker.example:6379/0\n"
                            "  visibility_timeout_seconds: 86400")
    config = load_config(_write(tmp_path, text + "worker:\n  max_memory_per_child_mb: 2048\n"))
    app = create_app(config)
    assert app.conf.broker_transport_options == {"visibility_timeout": 86400}
    assert config.worker.max_memory_per_child_mb == 2048


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("  port: 11112", "  prot: 11112"), ":3: node.prot: unknown key"),
        (("  port: 11112", "  port: 99999"), ":3: node.port: Input should be less than or equal to 65535"),
        (("{Modality: CT}", "{Modalty: CT}"), ":15: routes.0.match: 'Modalty' is not a DICOM attribute"),
        (("[lung-qct]", "[lung-qtc]"), ":16: routes.0.pipelines: unknown pipeline(s) lung-qtc"),
        (("send_to: [pacs]", "send_to: [pac]"), ":17: routes.0.send_to: unknown destination 'pac'"),
        (("ae_title: RADNODE", "ae_title: RADNODE-IS-FAR-TOO-LONG"), ":2: node.ae_title:"),
        (("quiet_seconds: 5", "quiet_seconds: soon"), ":11: completion.quiet_seconds:"),
    ],
)
def test_bad_value_is_reported_with_file_line_and_key_path(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    path = _write(tmp_path, CONTRACT.replace(*edit))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    assert all(problem.startswith(str(path)) for problem in caught.value.problems)


def test_missing_section_is_named() -> None:
    with pytest.raises(ConfigError, match=r"broker: Field required"):
        parse_config("storage: {path: x}\ndatabase: {url: 'sqlite:///x'}\n", base=Path("/tmp"))


def test_config_check_says_ok_with_exit_code_0(tmp_path: Path) -> None:
    result = radnode_cli("config", "check", str(_write(tmp_path, CONTRACT)))
    assert (result.returncode, result.stdout.strip()) == (0, "ok")


def test_config_check_names_the_bad_key_with_exit_code_2(tmp_path: Path) -> None:
    path = _write(tmp_path, CONTRACT.replace("port: 4242}", "port: 4242, colour: red}"))
    result = radnode_cli("config", "check", str(path))
    assert result.returncode == 2
    assert "destinations.pacs.colour: unknown key" in result.stderr


def test_shipped_example_configs_pass_config_check() -> None:
    examples = sorted((REPO / "config").glob("*.yaml"))
    assert examples
    for example in examples:
        result = radnode_cli("config", "check", str(example))
        assert result.returncode == 0, (example, result.stderr)


def test_every_command_is_documented_in_help() -> None:
    result = radnode_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "worker", "status", "config", "send"):
        assert command in result.stdout
        sub = radnode_cli(command, "--help")
        assert (sub.returncode == 0 and "--config" in sub.stdout) or command == "config"


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, CONTRACT + "node: {ae_title: SECOND}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    last = len(CONTRACT.splitlines()) + 1
    assert caught.value.problems == [
        f"{path}:{last}: node: given twice (first on line 1); YAML would keep only this one"
    ]


@pytest.mark.parametrize(("typo", "said"), [
    ("retention_dys: 3", "storage.retention_dys: unknown key; did you mean 'retention_days'?"),
    ("colour: red", "storage.colour: unknown key"),
])
def test_an_unknown_key_suggests_the_key_it_resembles(tmp_path: Path, typo: str, said: str) -> None:
    path = _write(tmp_path, CONTRACT.replace("  path: ./var/spool\n", f"  path: ./var/spool\n  {typo}\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [problem.split(": ", 1)[1] for problem in caught.value.problems] == [said]


def test_a_yaml_syntax_error_is_reported_as_file_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "storage:\n  path: [./spool\ndatabase: {url: 'sqlite:///x'}\n")
    result = radnode_cli("config", "check", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}:3:9: not valid YAML: "), result.stderr


def test_a_file_that_is_not_utf8_is_reported_at_its_first_bad_byte(tmp_path: Path) -> None:
    # an editor saved Latin-1: a clear error with where, not a UnicodeDecodeError traceback
    path = tmp_path / "radnode.yaml"
    path.write_bytes(CONTRACT.encode() + "node:\n  ae_title: RAD\u00e9\n".encode("latin-1"))
    line = CONTRACT.count("\n") + 2
    result = radnode_cli("config", "check", str(path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{path}:{line}:16: not UTF-8 text (byte 0xe9); save the file as UTF-8\n"


def test_the_demo_configuration_listens_on_this_machine_only() -> None:
    # the README's first command runs it: nobody on the network should reach a demo node
    assert load_config(REPO / "config" / "radnode.yaml").node.bind_address == "127.0.0.1"
