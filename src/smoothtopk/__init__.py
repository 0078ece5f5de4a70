"""smoothtopk: top-K and set-valued classification for many, ambiguous, long-tailed classes.

The public API is re-exported here; see the README for an overview.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
