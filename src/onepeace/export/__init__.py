"""Exporting a model's branches to other runtimes (``onepeace export onnx``)."""

from .onnx import ONNX_OUTPUTS, export_onnx

__all__ = ["ONNX_OUTPUTS", "export_onnx"]
