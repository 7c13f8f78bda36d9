"""The serving engine: paged KV cache, prefix cache, continuous-batching scheduler, model."""
