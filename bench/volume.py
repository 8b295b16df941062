"""Series load time: radnode's ``load_series`` vs SimpleITK's ImageSeriesReader vs a plain pydicom loop.

    .venv/bin/python -m bench.volume [--runs 5] [--slices 300]

Needs SimpleITK, which radnode itself does not use: ``.venv/bin/pip install SimpleITK``.

Builds a 300-slice CT in a temporary folder from the repository's 64-slice chest CT (every file a
copy with a new SOP Instance UID and a position 1 mm further along z, in Explicit VR Little Endian
as a node stores what storescu sends), then loads it with each reader in turn, ``--runs`` rounds,
and prints the median wall time and the median CPU time of the process (all its threads) of
each, and radnode's speed relative to the others (> 1 is faster). CPU time is the steadier figure
on a machine shared with other work. The files are read once before timing, so every reader sees a
warm page cache. Every reader must give the same HU voxels (float32, slices sorted along z), or
the bench fails.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

try:
    import SimpleITK as sitk
except ImportError:
    raise SystemExit("bench.volume compares with SimpleITK: .venv/bin/pip install SimpleITK") from None

from inference.volume import load_series
from tests.dicom_files import dicom_files_under

ROOT = Path(__file__).resolve().parent.parent
CT_SOURCE = ROOT / "tests" / "data" / "ct_chest_lungdx_a0001"


def build_series(count: int, out: Path) -> list[Path]:
    """``count`` CT slices cycled from the chest CT, one series, positions 1 mm apart along z."""
    sources = dicom_files_under(CT_SOURCE)
    series_uid = generate_uid()
    paths = []
    for index in range(count):
        ds = pydicom.dcmread(sources[index % len(sources)])
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        x, y, _ = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, float(index)]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def radnode(paths: list[Path]) -> tuple[object, np.ndarray]:
    volume = load_series(paths)
    return volume, volume.voxels.numpy()


def simpleitk(paths: list[Path]) -> tuple[object, np.ndarray]:
    reader = sitk.ImageSeriesReader()
    # GDCM's own sort along the normal, as a SimpleITK user would get it
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(paths[0].parent)))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    return image, sitk.GetArrayViewFromImage(image)  # a view: the image must outlive it


def pydicom_loop(paths: list[Path]) -> tuple[object, np.ndarray]:
    datasets = [pydicom.dcmread(path) for path in paths]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    voxels = np.stack([ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope)
                       + float(ds.RescaleIntercept) for ds in datasets])
    return datasets, voxels


READERS: dict[str, Callable[[list[Path]], tuple[object, np.ndarray]]] = {
    "radnode load_series": radnode,
    "SimpleITK ImageSeriesReader": simpleitk,
    "pydicom loop": pydicom_loop,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-volume-") as folder:
        paths = build_series(args.slices, Path(folder))
        random.Random(0).shuffle(paths)  # a spool names files by SOP Instance UID: no useful order
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        _, reference = pydicom_loop(paths)  # also warms the page cache
        print(f"{args.slices} CT slices 512×512 int16, {megabytes:.0f} MB, Explicit VR LE; "
              f"median of {args.runs} runs")
        times: dict[str, list[float]] = {name: [] for name in READERS}
        cpu_times: dict[str, list[float]] = {name: [] for name in READERS}
        for _ in range(args.runs):  # interleaved, so a change in the machine's load hits every reader
            for name, reader in READERS.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                result, voxels = reader(paths)
                times[name].append(time.perf_counter() - started)
                cpu_times[name].append(time.process_time() - cpu_started)
                if not np.array_equal(voxels, reference):
                    raise SystemExit(f"bench: {name} gave different voxels than the pydicom loop")
                del result, voxels
        medians = {name: statistics.median(values) for name, values in times.items()}
        cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
        for name, values in times.items():
            print(f"  {name:30s} wall {medians[name]:6.3f} s  CPU {cpu_medians[name]:6.3f} s  "
                  f"(wall of each run: {', '.join(f'{t:.2f}' for t in values)})")
        ours = "radnode load_series"
        for name in READERS:
            if name != ours:
                print(f"  radnode vs {name}: {medians[name] / medians[ours]:.2f}× wall, "
                      f"{cpu_medians[name] / cpu_medians[ours]:.2f}× CPU")


if __name__ == "__main__":
    main()
