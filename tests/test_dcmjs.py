"""radnode's SEG and SR read back in node.js by dcmjs, the DICOM library of OHIF and Cornerstone.

tests/js/read_results.mjs decodes each SEG (bit unpacking, frame → source slice, label maps) and
lists each SR's numeric items with dcmjs alone; this test compares that with the findings radnode
encoded. dcmjs is installed from tests/js/package-lock.json (``npm ci``) when missing; without
node/npm the test is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dicom_sr import codes
from dicom_sr.uids import ResultKind
from tests.result_objects import Written

JS_DIR = Path(__file__).parent / "js"
_NPM_TIMEOUT_S = 300
_NODE_TIMEOUT_S = 120


def _node_with_dcmjs() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node.js and npm are needed to read results with dcmjs (Debian: nodejs npm)")
    if not (JS_DIR / "node_modules" / "dcmjs" / "package.json").is_file():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True,
                       capture_output=True, timeout=_NPM_TIMEOUT_S)
    return node


@pytest.fixture(scope="module")
def corpus(result_corpus: tuple[Written, ...]) -> list[Written]:
    return [w for w in result_corpus if w.kind in (ResultKind.SEG, ResultKind.SR)]


@pytest.fixture(scope="module")
def read_by_dcmjs(corpus, tmp_path_factory) -> dict[str, dict]:
    node = _node_with_dcmjs()
    manifest = tmp_path_factory.mktemp("dcmjs") / "manifest.json"
    manifest.write_text(json.dumps([
        {"path": str(w.path), "kind": w.kind.value,
         "sourceUids": list(w.findings.source_sop_instance_uids)}
        for w in corpus
    ]))
    completed = subprocess.run([node, str(JS_DIR / "read_results.mjs"), str(manifest)], cwd=JS_DIR,
                               capture_output=True, text=True, timeout=_NODE_TIMEOUT_S, check=False)
    assert completed.returncode == 0, completed.stderr
    return {Path(entry["path"]).stem: entry for entry in json.loads(completed.stdout)}


def mask_sha256(mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()


@pytest.mark.parametrize("name", ["seg-binary", "seg-fractional", "seg-labelmap", "seg-binary-tilted"])
def test_dcmjs_reads_each_seg_with_its_segments_labels_and_exact_masks(corpus, read_by_dcmjs, name) -> None:
    (written,) = [w for w in corpus if w.name == name]
    seen = read_by_dcmjs[name]
    assert seen["segmentationType"] == (written.seg_type.name if written.seg_type else "BINARY")
    assert [(s["number"], s["label"]) for s in seen["segments"]] == [
        (number, segment.label) for number, segment in enumerate(written.findings.segments, start=1)
    ]
    for got, segment in zip(seen["segments"], written.findings.segments, strict=True):
        assert got["maskSha256"] == mask_sha256(segment.mask), segment.label


def test_dcmjs_reads_the_measurement_values_of_the_sr(corpus, read_by_dcmjs) -> None:
    (written,) = [w for w in corpus if w.name == "sr-measurements"]
    expected = sorted(
        (m.concept.value, m.unit.value, m.value) for g in written.findings.groups for m in g.measurements
    )
    got = sorted((n["concept"], n["unit"], n["value"]) for n in read_by_dcmjs["sr-measurements"]["numbers"])
    assert got == expected  # exact: the FD value, not only the 16-character DS


def test_dcmjs_reads_the_classification_probabilities_of_the_sr(corpus, read_by_dcmjs) -> None:
    (written,) = [w for w in corpus if w.name == "sr-classification"]
    got = [(n["concept"], n["unit"], n["value"]) for n in read_by_dcmjs["sr-classification"]["numbers"]]
    assert got == [
        (codes.PROBABILITY.value, codes.UNIT_NO_UNITS.value, c.probability)
        for c in written.findings.classifications
    ]
