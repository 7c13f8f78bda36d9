"""Llama-family models (Llama 2/3, Mistral, Qwen2, Qwen3): config, layers, weights loading."""

from worker.model.llama import LlamaForCausalLM
from worker.model.loader import load_model, torch_dtype
from worker.model_config import SUPPORTED_ARCHITECTURES, Llama3RopeScaling, ModelConfig

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "Llama3RopeScaling",
    "LlamaForCausalLM",
    "ModelConfig",
    "load_model",
    "torch_dtype",
]
