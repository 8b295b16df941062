"""Routing rules: every operator, exclusion, association keys, validation, and the dry run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

from node.config import Route, parse_config
from node.errors import ConfigError
from node.jobs.routing import SeriesFacts, assign, explain
from tests.node_process import radnode_cli

BASE_CONFIG: dict[str, Any] = {
    "storage": {"path": "spool"},
    "database": {"url": "sqlite:///radnode.db"},
    "broker": {"url": "sqla+sqlite:///broker.db"},
    "destinations": {
        "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242},
        "research": {"ae_title": "RESEARCH", "host": "127.0.0.1", "port": 4243},
    },
}


@pytest.fixture
def ct(chest_ct_dir: Path) -> SeriesFacts:
    """The repository's chest CT: Modality CT, SeriesDescription '5mm', SliceThickness 5."""
    header = pydicom.dcmread(sorted(chest_ct_dir.glob("*.dcm"))[0], stop_before_pixels=True)
    return SeriesFacts(header, calling_ae_title="CT_SCANNER_1", called_ae_title="RADNODE_CHEST")


def _pipelines(match: dict[str, Any], facts: SeriesFacts) -> list[str]:
    return [a.pipeline for a in assign([Route(match=match, pipelines=["lung-qct"])], facts)]


@pytest.mark.parametrize(
    ("match", "routed"),
    [
        ({"Modality": "CT"}, True),  # the contract form: equality
        ({"Modality": "MR"}, False),
        ({"Modality": ["MR", "CT"]}, True),  # any of a list
        ({"Modality": {"equals": "ct", "ignore_case": True}}, True),
        ({"Modality": "ct"}, False),  # equality is exact unless ignore_case
        ({"ImageType": "AXIAL"}, True),  # any value of a multi-valued attribute
        ({"SliceThickness": 5}, True),  # a number compares as a number: "5.00" == 5
        ({"SeriesDescription": {"regex": "^5MM$"}}, False),
        ({"SeriesDescription": {"regex": "^5MM$", "ignore_case": True}}, True),
        ({"SeriesDescription": {"regex": r"\d+mm"}}, True),
        ({"SliceThickness": {"max": 3}}, False),  # thin-slice rule: SliceThickness ≤ 3
        ({"SliceThickness": {"max": 5}}, True),  # bounds are inclusive
        ({"SliceThickness": {"min": 1, "max": 6}}, True),
        ({"SliceThickness": {"min": 5.5}}, False),
        ({"SeriesDescription": {"min": 1}}, False),  # not a number: outside every range
        ({"ContrastBolusAgent": {"present": False}}, True),  # absence
        ({"ContrastBolusAgent": {"present": True}}, False),
        ({"SliceThickness": {"present": True}}, True),  # presence
        ({"calling_ae_title": "CT_SCANNER_1"}, True),
        ({"calling_ae_title": ["MR_1", "MR_2"]}, False),
        ({"called_ae_title": {"regex": "^RADNODE_"}}, True),
        ({"called_ae_title": "RADNODE_NEURO"}, False),
        ({"Modality": "CT", "SliceThickness": {"max": 3}}, False),  # all conditions must hold
        ({}, True),  # no conditions: every series
    ],
)
def test_each_operator_matches_as_documented(
    match: dict[str, Any], routed: bool, ct: SeriesFacts
) -> None:
    assert _pipelines(match, ct) == (["lung-qct"] if routed else [])


def test_several_rules_add_pipelines_and_merge_destinations(ct: SeriesFacts) -> None:
    routes = [
        Route(match={"Modality": ["MR", "CT"]}, pipelines=["lung-qct"], send_to=["pacs"]),
        Route(match={"Modality": "CT", "BodyPartExamined": "NOSUCHPART"}, pipelines=["lung-qct"],
              send_to=["other"]),
        Route(match={"ImageType": "AXIAL"}, pipelines=["lung-qct"], send_to=["pacs", "research"]),
    ]
    [assignment] = assign(routes, ct)
    assert (assignment.pipeline, assignment.destinations) == ("lung-qct", ("pacs", "research"))


def test_an_exclude_rule_wins_whatever_its_place(ct: SeriesFacts) -> None:
    add = Route(match={"Modality": "CT"}, pipelines=["lung-qct"], send_to=["pacs"])
    exclude_named = Route(match={"calling_ae_title": "CT_SCANNER_1"}, pipelines=["lung-qct"],
                          exclude=True)
    exclude_all = Route(match={"SliceThickness": {"min": 4}}, exclude=True)
    exclude_other = Route(match={"Modality": "MR"}, exclude=True)
    assert assign([exclude_named, add], ct) == []
    assert assign([add, exclude_all], ct) == []
    assert [a.pipeline for a in assign([add, exclude_other], ct)] == ["lung-qct"]


def test_explain_gives_each_condition_its_verdict(ct: SeriesFacts) -> None:
    route = Route(name="thin chest", match={"Modality": "CT", "SliceThickness": {"max": 3}},
                  pipelines=["lung-qct"])
    [outcome] = explain([route], ct)
    assert not outcome.matched
    assert outcome.label == "routes[0] 'thin chest'"
    assert outcome.reasons == ("Modality is CT: ok", "SliceThickness is 5.00, not in [-inf, 3]")


def test_absent_attribute_and_empty_header_match_only_absence() -> None:
    facts = SeriesFacts(Dataset())
    assert _pipelines({"Modality": "CT"}, facts) == []
    assert _pipelines({"Modality": {"present": False}}, facts) == ["lung-qct"]


def _problems(routes: list[dict[str, Any]], **sections: Any) -> list[str]:
    text = yaml.safe_dump({**BASE_CONFIG, **sections, "routes": routes})
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base=Path("/tmp"), source="radnode.yaml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("route", "key", "why"),
    [
        ({"match": {"Modalty": "CT"}, "pipelines": ["lung-qct"]},
         "routes.0.match", "'Modalty' is not a DICOM attribute keyword"),
        ({"match": {"SeriesDescription": {"regex": "lung("}}, "pipelines": ["lung-qct"]},
         "routes.0.match.SeriesDescription.regex", "invalid regular expression 'lung('"),
        ({"match": {"SliceThickness": {"min": 5, "max": 3}}, "pipelines": ["lung-qct"]},
         "routes.0.match.SliceThickness", "min 5 is greater than max 3"),
        ({"match": {"SliceThickness": {"below": 3}}, "pipelines": ["lung-qct"]},
         "routes.0.match.SliceThickness.below", "unknown key"),
        ({"match": {"ReferencedImageSequence": "x"}, "pipelines": ["lung-qct"]},
         "routes.0.match", "'ReferencedImageSequence' is a sequence"),
        ({"match": {"Modality": "CT"}}, "routes.0", "a route needs pipelines (or exclude: true)"),
        ({"match": {"Modality": "CT"}, "exclude": True, "send_to": ["pacs"]},
         "routes.0", "an exclude route sends nothing"),
    ],
)
def test_config_check_names_the_key_of_a_bad_rule(route: dict[str, Any], key: str, why: str) -> None:
    [problem] = _problems([route])
    assert f": {key}: " in problem and why in problem, problem
    assert problem.startswith("radnode.yaml:")


def test_the_documented_example_rules_are_valid() -> None:
    readme = (Path(__file__).resolve().parent.parent / "config" / "README.md").read_text()
    example = readme.split("```yaml\n# routing example\n", 1)[1].split("```", 1)[0]
    config = parse_config(yaml.safe_dump({**BASE_CONFIG, **yaml.safe_load(example)}), base=Path("/tmp"))
    assert len(config.routes) >= 3 and any(route.exclude for route in config.routes)


def test_route_dry_run_prints_each_rule_and_the_pipelines(tmp_path: Path, chest_ct_dir: Path) -> None:
    config = tmp_path / "radnode.yaml"
    routes = [
        {"name": "chest CT", "match": {"Modality": "CT", "SliceThickness": {"max": 6}},
         "pipelines": ["lung-qct"], "send_to": ["pacs"]},
        {"name": "not from the test bench", "exclude": True, "match": {"calling_ae_title": "BENCH"}},
    ]
    config.write_text(yaml.safe_dump({**BASE_CONFIG, "routes": routes}))
    routed = radnode_cli("route", "--dry-run", str(chest_ct_dir), "--config", str(config))
    assert routed.returncode == 0, routed.stderr
    assert "routes[0] 'chest CT': MATCHED, adds lung-qct" in routed.stdout
    assert "SliceThickness is 5.00: ok" in routed.stdout
    assert "routes[1] 'not from the test bench': no match" in routed.stdout
    assert "pipelines: lung-qct -> pacs" in routed.stdout
    assert routed.stdout.count("series ") == 1  # one series in the folder

    excluded = radnode_cli("route", "--dry-run", str(chest_ct_dir / "1-01.dcm"), "--config", str(config),
                           "--calling-ae-title", "BENCH")
    assert "MATCHED, excludes every pipeline" in excluded.stdout
    assert "pipelines: none" in excluded.stdout
