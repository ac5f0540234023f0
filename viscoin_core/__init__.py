"""VisCoIN reproducibility study: concept-based explanations made visible through StyleGAN2."""

__version__ = "0.1.0"
