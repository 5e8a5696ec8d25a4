"""Lighthouse Store: a gRPC streaming event-store daemon on LMDB."""

__version__ = "0.1.0"

__all__ = ["__version__"]
