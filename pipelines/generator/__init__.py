"""TGDM: the texture-geometry-aware diffusion generator, its checkpoints and its sampler."""
