"""The public gRPC API, kvfleet/v1 (protos and generated stubs)."""
