"""Lighthouse Store protocol: the generated code for ``protos/`` and the
constants that the daemon and the client library must agree on.

- ``lighthouse_proto.v1.store_pb2`` / ``store_pb2_grpc``: generated from
  ``protos/lighthouse/store/v1/store.proto`` by ``scripts/generate_protos.py``
  (checked in, never edited by hand). Only ``store_pb2_grpc`` imports grpc.
- ``lighthouse_proto.errors``: the failure classes and error reasons carried in
  every error's ``google.rpc.ErrorInfo``.
- ``lighthouse_proto.limits``: the default request limits.

This package imports neither grpc nor anything of the daemon or the client, so
the storage layer can use the record schema without loading a network stack.
"""

__all__: list[str] = []
