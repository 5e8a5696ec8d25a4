"""Lighthouse Store client.

For now this package holds the protobuf and gRPC stubs generated from
``protos/`` (``lighthouse_client.pb`` and ``lighthouse_client.pb_grpc``),
which the daemon, the tests and the perf harness share. The typed client
library with retries, resumable subscriptions and degraded mode is built on
top of them.
"""

from lighthouse_client._pb import store_pb2 as pb
from lighthouse_client._pb import store_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
