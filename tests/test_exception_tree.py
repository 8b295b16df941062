"""radnode has one exception tree: every exception class its packages define derives from RadnodeError.

The classes are found by importing every module of node, inference and dicom_sr, so a new one
anywhere (a stray ``class Oops(ValueError)``) fails here; the tree is drawn in node/errors.py.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import dicom_sr.errors
import inference.errors
import node.errors
from dicom_sr.errors import EncodingError, RadnodeError

PACKAGES = ("dicom_sr", "inference", "node")
#: alembic runs these scripts inside its own context; importing one elsewhere fails
SCRIPTS = ("node.spool.migrations",)


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in PACKAGES:
        names = [package, *(module.name for module in pkgutil.walk_packages(
            importlib.import_module(package).__path__, f"{package}."))]
        for name in names:
            if name.startswith(SCRIPTS):
                continue
            for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == name:
                    found[f"{name}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_class_of_the_packages_derives_from_radnode_error() -> None:
    classes = _exception_classes()
    # the walk sees every package, strays and private signals included
    assert {"dicom_sr.errors.EncodingError", "inference.registration.RegistrationError",
            "inference.pipelines.UnknownPipeline", "node.receive.stream_to_disk.ProtocolError",
            "node.spool.dicom_header._Unsure", "node.config._KeyedError"} <= classes.keys()
    assert sorted(name for name, cls in classes.items() if not issubclass(cls, RadnodeError)) == []


def test_there_is_one_root_re_exported_up_the_packages() -> None:
    assert node.errors.RadnodeError is dicom_sr.errors.RadnodeError is RadnodeError
    assert issubclass(inference.errors.InferenceError, RadnodeError)
    assert issubclass(node.errors.StorageError, RadnodeError)


def test_errors_that_were_builtin_kinds_still_are() -> None:
    """``except ValueError`` / ``except LookupError`` written before the tree still catch them."""
    from dicom_sr.seg import EncodingError as from_seg
    from inference.pipelines import UnknownPipeline

    assert from_seg is EncodingError and issubclass(EncodingError, ValueError)
    assert issubclass(UnknownPipeline, inference.errors.InferenceError)
    assert issubclass(UnknownPipeline, LookupError)
