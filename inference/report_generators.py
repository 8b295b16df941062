"""Report generators: a radiograph in, the Findings and Impression text of a report out.

Published report generators differ in how they are called (an image-to-token-ids network with a
vocabulary, an encoder with a separate language model, …), so the report pipeline talks to them
through one small interface, :class:`ReportGenerator`, and ``models.NAME.report.adapter`` in the
YAML names the adapter that wraps a model file. Adapters shipped:

``token-ids``
    :class:`TokenIdsGenerator`: a TorchScript or ONNX network (run by the model registry's
    backend) whose output is token ids, one row per image, decoding loop included (greedy or
    beam search is the network's own); a vocabulary file turns the ids into words. Generation stops
    at the end token; the words before the impression token are the Findings, those after it the
    Impression. :class:`inference.networks.report_generator.ReportGenerator` is such a network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from inference.backends import Backend
from inference.errors import ModelError, ModelFileMissing, ModelFormatError
from inference.formats import check_pinned
from inference.model_config import ImageInputSpec, ModelConfig, ReportSpec
from inference.radiograph_input import network_input
from inference.xray import Radiograph

__all__ = ["ADAPTERS", "GeneratedReport", "ReportGenerator", "TokenIdsGenerator", "TokenReader",
           "open_generator", "read_vocabulary", "vocabulary_path", "words_to_text"]

_NO_SPACE_BEFORE = frozenset(".,;:!?)%")
_NO_SPACE_AFTER = ("(",)
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")


@dataclass(frozen=True)
class GeneratedReport:
    """What a generator wrote; either part may be empty (many generators write Findings only)."""

    findings: str
    impression: str


class ReportGenerator(Protocol):
    """Writes a report about one frontal chest radiograph."""

    def generate(self, image: Radiograph) -> GeneratedReport: ...


class TokenReader:
    """Token ids → report text, by a vocabulary and the special tokens of ``models.NAME.report``."""

    def __init__(self, vocabulary: Sequence[str], spec: ReportSpec, model: str) -> None:
        self.vocabulary = tuple(vocabulary)
        self.model = model
        missing = [token for token in (spec.end_token, spec.impression_token, *spec.skip_tokens)
                   if token is not None and token not in self.vocabulary]
        if missing:
            raise ModelFormatError(f"model {model!r}: the vocabulary has no {', '.join(missing)} "
                                   f"token(s), which models.{model}.report names")
        self.end = self.vocabulary.index(spec.end_token)
        self.impression = (None if spec.impression_token is None
                           else self.vocabulary.index(spec.impression_token))
        self.skip = frozenset(self.vocabulary.index(token) for token in spec.skip_tokens)

    def __call__(self, ids: Sequence[int]) -> GeneratedReport:
        """Findings and Impression text of ``ids`` (up to the end token)."""
        findings: list[str] = []
        impression: list[str] = []
        words = findings
        for token in ids:
            if not 0 <= token < len(self.vocabulary):
                raise ModelFormatError(
                    f"model {self.model!r} wrote token id {token}, outside its vocabulary of "
                    f"{len(self.vocabulary)} tokens (models.{self.model}.report.vocabulary is not the "
                    "model's)")
            if token == self.end:
                break
            if token == self.impression:
                words = impression
            elif token not in self.skip:
                words.append(self.vocabulary[token])
        return GeneratedReport(words_to_text(findings), words_to_text(impression))


class TokenIdsGenerator:
    """The ``token-ids`` adapter (see the module docstring): ``backend`` runs the network."""

    def __init__(self, backend: Backend, image: ImageInputSpec, reader: TokenReader) -> None:
        self.backend = backend
        self.image = image
        self.reader = reader

    def generate(self, image: Radiograph) -> GeneratedReport:
        output = self.backend(network_input([image], self.image, self.backend.device))
        if output.ndim != 2 or output.shape[0] != 1:
            raise ModelFormatError(f"model {self.reader.model!r} returned shape {tuple(output.shape)}; the "
                                   "token-ids adapter expects token ids (1, tokens)")
        return self.reader([int(value) for value in output[0].round().long().tolist()])


def words_to_text(words: Sequence[str]) -> str:
    """Tokens → a sentence: no space before punctuation, sentences capitalised."""
    text = ""
    for word in words:
        if text and word[0] not in _NO_SPACE_BEFORE and not text.endswith(_NO_SPACE_AFTER):
            text += " "
        text += word
    return _SENTENCE_START.sub(lambda match: match[1] + match[2].upper(), text)


def _open_token_ids(name: str, config: ModelConfig, backend: Backend) -> ReportGenerator:
    assert config.report is not None and config.image is not None  # ModelConfig requires both for reports
    reader = TokenReader(read_vocabulary(name, config), config.report, name)
    return TokenIdsGenerator(backend, config.image, reader)


#: ``models.NAME.report.adapter`` → opener(model name, its config, its backend)
ADAPTERS: dict[str, Callable[[str, ModelConfig, Backend], ReportGenerator]] = {"token-ids": _open_token_ids}


def open_generator(name: str, config: ModelConfig, backend: Backend) -> ReportGenerator:
    """The adapter the YAML names for report model ``name``, around its loaded ``backend``."""
    if config.report is None:
        raise ModelError(f"model {name!r} has no report section (models.{name}.report); it is not a "
                         "report generator")
    return ADAPTERS[config.report.adapter](name, config, backend)


def read_vocabulary(name: str, config: ModelConfig) -> list[str]:
    """The vocabulary file of report model ``name``: present, as pinned, one token per line."""
    assert config.report is not None
    path = vocabulary_path(config)
    if not path.is_file():
        raise ModelFileMissing(f"model {name!r}: vocabulary {path} does not exist; copy the model's "
                               f"vocabulary there or fix models.{name}.report.vocabulary")
    check_pinned(name, path, config.report.vocabulary_sha256, f"models.{name}.report.vocabulary_sha256")
    tokens = path.read_text(encoding="utf-8").splitlines()
    if not tokens or any(not token.strip() for token in tokens):
        raise ModelFormatError(f"model {name!r}: vocabulary {path} must hold one token per line, "
                               "no blank lines")
    return [token.strip() for token in tokens]


def vocabulary_path(config: ModelConfig) -> Path:
    """Where the vocabulary is: ``report.vocabulary``, relative to the model file's folder."""
    assert config.report is not None
    return config.file.parent / config.report.vocabulary
