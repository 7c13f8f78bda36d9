"""The kvfleet protobuf package."""
