"""Faces in and out: analysis, alignment crops, paste-back, smoothing, coefficients from faces."""
