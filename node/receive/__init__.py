"""Stage 1, receive: the DICOM listener and everything an association goes through before an
instance is in the spool — who may call (access), the association and PDU limits (acceptor,
bounded_dul, pdata), TLS, and writing each instance to disk as it streams in (stream_to_disk).
"""
