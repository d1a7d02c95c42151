"""Errors the engine raises; each message names the node, tensor or input at fault."""
from __future__ import annotations

from weights_providers.format import WeightsError

from .graph import GraphFormatError


class EngineError(Exception):
    """Base class of the engine's own errors."""


class UnsupportedOpsError(EngineError):
    """Raised at load time, listing every op type the graph uses that is not implemented."""

    def __init__(self, missing: dict[str, list[str]]):
        self.missing = missing
        lines = [f"  {op_type}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''} "
                 f"({len(names)} node{'s' if len(names) != 1 else ''})"
                 for op_type, names in sorted(missing.items())]
        super().__init__(f"{len(missing)} unsupported op type(s) in the model:\n" + "\n".join(lines))


class InputError(EngineError, ValueError):
    """A feed is missing, unexpected, or has the wrong dtype or shape."""


class ConversionError(EngineError):
    """The ONNX model cannot be converted: names the tensor or node and why."""


class OpError(EngineError):
    """An op failed while running: names the node, its type and its inputs' shapes."""


__all__ = ["ConversionError", "EngineError", "UnsupportedOpsError", "InputError", "OpError", "WeightsError", "GraphFormatError"]
