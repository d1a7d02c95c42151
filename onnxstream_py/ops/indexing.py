"""indexing ops (being written)."""
from .registry import op  # noqa: F401
