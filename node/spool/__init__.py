"""Stage 2, spool: the instances on disk and their catalog rows — files (store), the header scan
that vets them (dicom_header), the catalog, recovery after a crash and retention.
"""
