"""radnode tests (a package, so helpers import as ``tests.orthanc``, ``tests.dcmtk``)."""
