"""Test helpers: model builders, the RPC device server."""
