"""gRPC front door and prefix-cache-aware routing (built on the engine; see the issues)."""
