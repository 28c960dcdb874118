"""Float PyTorch networks built from plain Conv-BN-activation blocks."""

from models.registry import create_model, list_models
from models.summary import summary

__all__ = ["create_model", "list_models", "summary"]
