"""MAIE: the Modular Audio Intelligence Engine."""

__version__ = "0.1.0"

__all__ = ["__version__"]
