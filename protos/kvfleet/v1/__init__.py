"""kvfleet.v1: the Generation service (generated stubs; see generation.proto)."""
