"""Batched PyTorch rasterization of 3DMM meshes and the image maps built on it."""
