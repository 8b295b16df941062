"""A 3-D regressor defined in the YAML (``task: regression``): numbers about a series, e.g. brain age.

``pipelines: {NAME: {model: MODEL}}`` with a regression model makes NAME a pipeline of volumes. The
network contract (TorchScript or ONNX): it takes the whole volume prepared as the model's ``input``
says (on its axes, normalised, resampled, centred in ``patch_size``: one (1, channels, *patch_size)
batch, as SFCN takes a T1 brain; :func:`inference.preprocess.fitted_input`) and returns one number per
entry of ``values`` ((1, K), (K,) or a scalar for one). Each becomes ``scale * output + offset`` in
its unit, a TID 300 numeric item in a TID 1501 group about the series, with the algorithm named
(TID 4019), in the TID 1500 SR.
"""

from __future__ import annotations

import torch

from dicom_sr.codes import Code
from dicom_sr.findings import Algorithm, Findings, Measurement, MeasurementGroup
from inference.errors import ModelError
from inference.pipelines.base import ModelPipeline
from inference.volume import Volume

__all__ = ["RegressionPipeline"]


class RegressionPipeline(ModelPipeline):
    """Estimates the ``values`` of model ``model`` of ``registry`` from a volume (module docstring)."""

    def run(self, volume: Volume, device: torch.device) -> Findings:
        """Estimate from ``volume``; the model runs on the registry's device (the worker's, ``device``)."""
        config = self.registry.config(self.model)
        loaded, _, outputs = self._forward_fitted(volume, "regression")
        outputs = outputs.flatten()
        if outputs.numel() != len(config.values) or not bool(torch.isfinite(outputs).all()):
            raise ModelError(f"model {self.model!r} gave {outputs.numel()} value(s) "
                             f"({outputs.tolist()[:4]}…); models.{self.model}.values names "
                             f"{len(config.values)} finite outputs")
        groups = tuple(
            MeasurementGroup(
                tracking_id=value.name,
                finding=Code.parse(value.finding, value.finding_meaning),
                measurements=(Measurement(Code.parse(value.code, value.meaning),
                                          value.scale * output + value.offset,
                                          Code(value.unit, "UCUM", value.unit_meaning)),),
            )
            for (_, value), output in zip(sorted(config.values.items()), outputs.tolist(), strict=True)
        )
        return Findings(
            algorithm=Algorithm(f"radnode {self.name}", self.version, model_sha256=loaded.source.sha256),
            source_sop_instance_uids=volume.sop_instance_uids,
            groups=groups,
        )
