"""Deployment helpers (ONNX export), imported by the tools that deploy, not by ``import mmoverlock``."""
