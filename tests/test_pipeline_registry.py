"""The pipeline registries: built-ins by name, learned-pipeline kinds by task, both extensible and
importable without torch (``radnode config check`` lists pipelines on hosts that have none)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dicom_sr.findings import Findings
from inference.model_config import Task
from inference.pipelines import PIPELINES, TASKS, UnknownPipeline, available, create
from inference.pipelines.classification import ClassificationPipeline
from inference.pipelines.ct_denoise import CTDenoise
from inference.pipelines.detection import DetectionPipeline
from inference.pipelines.image import ImagePipeline
from inference.pipelines.lung_qct import LungQCT
from inference.pipelines.regression import RegressionPipeline
from inference.pipelines.report import ReportPipeline
from inference.pipelines.segmentation import SegmentationPipeline
from inference.plugins import PluginRegistry
from inference.registry import ModelRegistry
from inference.volume import Volume
from tests.fresh_python import run_fresh
from tests.tiny_models import model_config, save_torchscript, tiny_segmenter


@dataclass
class Registration:
    """A pipeline kind as a new module would define one, registered by the tests alone."""

    name: str
    model: str
    registry: ModelRegistry
    version: str | None = None
    probabilities: bool = False

    def run(self, volume: Volume, device: torch.device) -> Findings:
        raise NotImplementedError


class Probe:
    """A built-in pipeline as a new module would define one."""

    name = "probe"
    version = "0.1"

    def run(self, volume: Volume, device: torch.device) -> Findings:
        raise NotImplementedError


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """One tiny model, ``tiny`` (task segmentation); ``detector`` is the same file with task registration,
    a task no ModelConfig accepts yet: the one a new kind would come with."""
    config = model_config(save_torchscript(tiny_segmenter(), tmp_path / "tiny.ts"))
    detector = config.model_copy(update={"task": "registration"})
    return ModelRegistry({"tiny": config, "detector": detector}, torch.device("cpu"), tmp_path / "cache")


@pytest.fixture
def registration() -> Iterator[None]:
    TASKS.register("registration", Registration)
    yield
    TASKS.unregister("registration")


def test_every_task_a_model_may_have_has_a_kind_and_every_builtin_is_listed() -> None:
    tasks = tuple(Task)

    assert TASKS.names() == tasks == ("segmentation", "classification", "report", "detection", "regression",
                                      "image")
    assert [TASKS.get(task) for task in tasks] == [SegmentationPipeline, ClassificationPipeline,
                                                   ReportPipeline, DetectionPipeline, RegressionPipeline,
                                                   ImagePipeline]
    assert available() == sorted(PIPELINES.names()) == ["ct-denoise", "lung-qct"]
    assert (PIPELINES.get("lung-qct"), PIPELINES.get("ct-denoise")) == (LungQCT, CTDenoise)


def test_create_builds_the_kind_of_the_models_task(registry: ModelRegistry) -> None:
    pipeline = create("tiny-seg", "tiny", registry, probabilities=True)

    assert isinstance(pipeline, SegmentationPipeline)
    assert (pipeline.name, pipeline.models, pipeline.probabilities) == ("tiny-seg", ["tiny"], True)


def test_a_newly_registered_task_kind_is_what_create_builds(registry: ModelRegistry,
                                                            registration: None) -> None:
    pipeline = create("find-nodules", "detector", registry, "2.0", probabilities=True)

    assert pipeline == Registration("find-nodules", "detector", registry, "2.0", True)
    assert "registration" in TASKS.names()


def test_a_task_with_no_kind_is_an_unknown_pipeline_naming_the_known_tasks(registry: ModelRegistry) -> None:
    with pytest.raises(UnknownPipeline, match="task 'registration', which no pipeline kind runs; known "
                                              "tasks: segmentation, classification, report, detection, "
                                              "regression, image"):
        create("find-nodules", "detector", registry)


def test_a_builtin_registered_by_its_path_is_listed_and_created_on_first_use() -> None:
    PIPELINES.register("probe", f"{__name__}:Probe")
    try:
        assert available() == ["ct-denoise", "lung-qct", "probe"]
        assert isinstance(create("probe"), Probe)
    finally:
        PIPELINES.unregister("probe")
    with pytest.raises(UnknownPipeline,
                       match=r"unknown pipeline 'probe'; known pipelines: ct-denoise, lung-qct$"):
        create("probe")


def test_register_keeps_the_order_and_refuses_a_name_twice_or_an_unknown_anchor() -> None:
    plugins: PluginRegistry[int] = PluginRegistry("number", {"one": 1, "three": 3})
    plugins.register("two", 2, before="three")
    plugins.register("four", 4)

    assert plugins.names() == ("one", "two", "three", "four")
    with pytest.raises(ValueError, match="number 'two' is registered already"):
        plugins.register("two", 22)
    with pytest.raises(ValueError, match="before 'zero', which is not registered"):
        plugins.register("minus-one", -1, before="zero")


def test_the_registry_imports_and_lists_without_torch() -> None:
    script = ("import sys; sys.modules['torch'] = None\n"
              "from inference.pipelines import TASKS, available\n"
              "print(available(), TASKS.names())")
    done = run_fresh(script)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("['ct-denoise', 'lung-qct'] ('segmentation', 'classification', 'report', "
                                   "'detection', 'regression', 'image')")
