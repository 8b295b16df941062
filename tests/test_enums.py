"""Enumerated values are StrEnums end to end: converted once where they come in (YAML, a public
function's argument), equal to the strings they were, and refused with the allowed values named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_sr.enums import SegType, parse
from dicom_sr.uids import ResultKind, result_uids
from inference.model_config import ModelConfig, Task
from node.config import parse_config
from node.errors import ConfigError
from tests.test_config import CONTRACT


@pytest.mark.parametrize("value", ["fractional", SegType.FRACTIONAL])
def test_parse_gives_the_member_for_its_value_or_itself(value: SegType | str) -> None:
    assert parse(SegType, value, "seg_type") is SegType.FRACTIONAL


def test_a_bad_value_is_refused_naming_the_allowed_ones() -> None:
    allowed = "binary, fractional, labelmap"
    with pytest.raises(ValueError, match=rf"^seg_type must be one of {allowed}, got 'FRACT'$"):
        parse(SegType, "FRACT", "seg_type")
    with pytest.raises(ValueError, match=r"^kind must be one of seg, sr, text, sc, rtstruct, image, "
                                         r"got 'pdf'$"):
        result_uids("1.2.3", "lung-qct", "1.0", None, "pdf")


def test_members_are_their_strings_so_stored_values_do_not_change() -> None:
    assert SegType.LABELMAP == "labelmap" and f"{SegType.LABELMAP}" == "labelmap"
    assert json.dumps([Task.REPORT]) == '["report"]'
    args = ("1.2.3", "lung-qct", "1.0", None)
    assert result_uids(*args, ResultKind.SEG, SegType.LABELMAP) == result_uids(*args, "seg", "labelmap")


def test_the_yaml_gives_members(tmp_path: Path) -> None:
    config = parse_config(CONTRACT + "pipelines: {lung-qct: {seg_type: labelmap}}\n", base=tmp_path)
    assert config.pipeline_options("lung-qct").seg_type is SegType.LABELMAP
    assert config.pipeline_options("other").seg_type is SegType.BINARY
    fields = {"file": tmp_path / "m.onnx", "format": "onnx", "sha256": "0" * 64, "image": {"size": (64, 64)},
              "findings": "preset:chestxray14"}
    assert ModelConfig.model_validate({**fields, "task": "classification"}).task is Task.CLASSIFICATION


def test_a_bad_yaml_value_names_key_line_and_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"<config>:\d+: pipelines\.lung-qct\.seg_type: Input should be "
                                          r"'binary', 'fractional' or 'labelmap'$"):
        parse_config(CONTRACT + "pipelines: {lung-qct: {seg_type: FRACTIONAL}}\n", base=tmp_path)
    fields = {"file": "m.onnx", "format": "onnx", "sha256": "0" * 64, "task": "tracking"}
    with pytest.raises(ValueError, match=r"Input should be 'segmentation', 'classification', 'report', "
                                         r"'detection', 'regression' or 'image'"):
        ModelConfig.model_validate(fields)
