"""Serving: model packages, the inference API, multi-task serving."""
