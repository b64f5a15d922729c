"""Parametric face models, their coefficients and fitting them to landmarks."""
