"""Datasets, preprocessing, trainers (accelerate) and evaluation metrics."""
