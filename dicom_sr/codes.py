"""Coded concepts radnode writes into SEG and SR, in one place.

Each constant is a fact taken from a published table; the comment names it. ``Code`` is a plain
value type (no pydicom), so pipelines can name their outputs without depending on DICOM encoding;
:mod:`dicom_sr.seg` and :mod:`dicom_sr.sr` turn it into a highdicom ``CodedConcept``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Code"]


@dataclass(frozen=True)
class Code:
    """A coded concept: (CodeValue, CodingSchemeDesignator, CodeMeaning), PS3.3 Table 8.8-1."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        if not self.value or not self.scheme or not self.meaning:
            raise ValueError(f"a code needs a value, a scheme and a meaning, got {self!r}")

    @classmethod
    def parse(cls, text: str, meaning: str) -> Code:
        """``SCHEME:VALUE`` as the YAML and the label tables write it (``SCT:39607008``) → Code."""
        scheme, _, value = text.partition(":")
        return cls(value, scheme, meaning)


# --- Segmented property categories (CID 7150) -------------------------------------------------
# 91723000 is the CID 7150 code; 123037004 ("Body structure") is an older value no CID lists now.
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")

# --- Anatomy (SNOMED CT; CID 7151 / CID 4 "Anatomic Region") ----------------------------------
LUNG = Code("39607008", "SCT", "Lung")  # CID 7151, CID 4
# Valid pre-coordinated SNOMED CT concepts ("Right lung structure", "Left lung structure"), but not
# members of CID 7151: the standard's own way is LUNG with a laterality modifier (CID 244, below).
RIGHT_LUNG = Code("3341006", "SCT", "Right lung")
LEFT_LUNG = Code("44029006", "SCT", "Left lung")
# CID 4 / CID 7151 "Chest"; 51185008 ("Thoracic structure") is an older value no CID lists now.
CHEST = Code("816094009", "SCT", "Chest")

# --- Laterality (CID 244) ---------------------------------------------------------------------
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
BILATERAL = Code("51440002", "SCT", "Bilateral")

# --- Procedures reported (TID 1500 row 4, CID 100 "Quantitative Diagnostic Imaging Procedures",
# extensible). Only members: PixelMed's validator (IHE AIR testing) reports any other code as an
# error, and CID 100 has no chest CT and no radiography; the body region is in the finding sites.
CT_UNSPECIFIED_BODY_REGION = Code("25045-6", "LN", "CT unspecified body region")  # CID 100
MRI_UNSPECIFIED_BODY_REGION = Code("25056-3", "LN", "MRI unspecified body region")  # CID 100
PET_UNSPECIFIED_BODY_REGION = Code("44136-0", "LN", "PET unspecified body region")  # CID 100
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")  # CID 100: radiographs

# --- Observer type (CID 270) ------------------------------------------------------------------
DEVICE = Code("121007", "DCM", "Device")

# --- Algorithm family (CID 7162) --------------------------------------------------------------
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")

# --- Measurement concepts and derivations (CID 7469, CID 7464) ---------------------------------
VOLUME = Code("118565006", "SCT", "Volume")  # CID 7469
ATTENUATION_COEFFICIENT = Code("112031", "DCM", "Attenuation Coefficient")  # CID 7469, CID 7180
MEAN = Code("373098007", "SCT", "Mean")  # CID 7464

# --- Units (UCUM, CID 7181) -------------------------------------------------------------------
# "mL" is valid case-sensitive UCUM (as is "ml"); CID 7181 is extensible.
UNIT_MILLILITER = Code("mL", "UCUM", "milliliter")
UNIT_HOUNSFIELD = Code("[hnsf'U]", "UCUM", "Hounsfield unit")  # CID 7181
UNIT_PERCENT = Code("%", "UCUM", "Percent")  # CID 7181

# --- Lung densitometry (QIBA Lung Density profile: LAA-950 and Perc15) ----------------------------
# No published DCM/SCT concept was found for these two indices (searched PS3.16 CIDs 7464/7469/7180
# as shipped in pydicom 3.0.2's code dictionary, and public DICOM SR lung-densitometry examples;
# CID 7464 has no percentile modifier; DICOM's percentile concepts, CID 226, are population
# percentiles 5/10/90/95 of a reference distribution, not a percentile of a histogram). They
# are coded in radnode's private scheme (PS3.3 8.2: designators beginning with "99" are private).
PRIVATE_SCHEME = "99RADNODE"
LOW_ATTENUATION_AREA_950 = Code("LAA950", PRIVATE_SCHEME, "Lung volume fraction below -950 HU")
# Pre-coordinated, as LAA950 is: a viewer shows a numeric item by its concept name alone (OHIF v3
# drops derivation modifiers), and "Attenuation Coefficient" twice would hide which one is Perc15.
ATTENUATION_PERCENTILE_15 = Code("PERC15", PRIVATE_SCHEME, "Attenuation 15th percentile")

# --- Classifier outputs (TID 1501 qualitative evaluation + numeric probability) ----------------
PRESENT = Code("52101004", "SCT", "Present")  # CID 240 / 241
ABSENT = Code("272519000", "SCT", "Absent")  # CID 240 / 241
PROBABILITY = Code("122157", "DCM", "Probability")  # PS3.16 Annex D
UNIT_NO_UNITS = Code("1", "UCUM", "no units")  # CID 7181: a probability in [0, 1]

# --- Detector outputs (TID 1410 per detection, TID 1501 count) -----------------------------------
# A CAD concept (CID 6048): how sure the detector is of a finding, as a percentage of certainty
CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
NUMBER_OF_LESIONS = Code("246206008", "SCT", "Number of lesions")  # an observable entity

# --- Derived images (PS3.3 C.7.6.1.1.3: Source Image Sequence and Derivation Code Sequence) -------
SOURCE_IMAGE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")  # CID 7202
SMOOTHING = Code("113087", "DCM", "Smoothing")  # CID 7203 (it has no "denoising"; smoothing is what one does)
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")  # CID 7005
ACQUISITION_EQUIPMENT = Code("109101", "DCM", "Acquisition Equipment")  # CID 7005

# --- Text reports (Comprehensive SR) -----------------------------------------------------------
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic imaging report")  # CID 7000
FINDINGS = Code("121070", "DCM", "Findings")  # TID 2000 section
FINDING = Code("121071", "DCM", "Finding")  # CID 3419, CID 7002
IMPRESSION = Code("121073", "DCM", "Impression")  # CID 3419, CID 7002
