"""The package version (a leaf: the registry and the package root read it from here)."""

__version__ = "0.1.0"
