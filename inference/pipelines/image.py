"""An image-to-image model defined in the YAML (``task: image``): a derived series of the source.

``pipelines: {NAME: {model: MODEL}}`` with an image model makes NAME a pipeline of CT or MR volumes
(a denoising network, an MR → synthetic CT network): the volume is laid, normalised and resampled as
the model's ``input`` says, run through the network by sliding window (patches blended with a
Gaussian, as a segmentation is), and its one output channel is brought back to the exact source grid
(trilinear) and read as the model's ``output`` says (scale, offset, clip, unit). The result is a
:class:`~dicom_sr.findings.DerivedImage`, which :mod:`dicom_sr.derived` writes as one image per source
slice.
"""

from __future__ import annotations

import torch

from dicom_sr.codes import Code
from dicom_sr.findings import Algorithm, DerivedImage, Findings
from inference.errors import ModelError
from inference.model_config import InputSpec
from inference.pipelines.base import ModelPipeline
from inference.preprocess import image_to_volume, model_input
from inference.sliding_window import sliding_window
from inference.volume import Volume

__all__ = ["ImagePipeline"]


class ImagePipeline(ModelPipeline):
    """Runs image model ``model`` of ``registry`` on a volume: its output image on the source grid."""

    def run(self, volume: Volume, device: torch.device) -> Findings:
        """Make the derived image of ``volume``; the model runs on the registry's device (the worker's)."""
        config = self.registry.config(self.model)
        loaded = self.registry.get(self.model)
        spec, output = loaded.source.input, config.output
        assert isinstance(spec, InputSpec) and output is not None  # ModelConfig: an image model has both
        backend = loaded.backend
        image = model_input(volume, spec, backend.device)
        made = sliding_window(image, backend, spec.patch_size, spec.overlap, spec.batch_size, backend.device,
                              scheme=spec.window_scheme)
        if made.shape[0] != 1:
            raise ModelError(f"model {self.model!r} gives {made.shape[0]} output channels; an image model "
                             f"gives one image (models.{self.model}.output says what it is)")
        values = image_to_volume(made[0], volume, spec) * output.scale + output.offset
        if output.low is not None or output.high is not None:
            values = values.clamp(output.low, output.high)
        return Findings(
            algorithm=Algorithm(f"radnode {self.name}", self.version, model_sha256=loaded.source.sha256),
            source_sop_instance_uids=volume.sop_instance_uids,
            derived_image=DerivedImage(
                values=values.to(torch.float32).cpu().numpy(), description=output.description,
                unit=Code(output.unit, "UCUM", output.unit_meaning),
                derivation=Code.parse(output.derivation, output.derivation_meaning),
            ),
        )
