"""onnxstream_py: a memory-frugal streaming inference engine for ONNX models.

    import onnxstream_py as osp
    with osp.Model("unet_dir", provider="prefetch", options=osp.RunOptions(threads=4)) as m:
        outputs = m.run({"sample": latents, "timestep": t, "encoder_hidden_states": text})

Names are imported lazily, so ``python -m onnxstream_py --threads N`` can configure the
BLAS thread count before numpy is loaded.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_EXPORTS = {
    "Model": ".model", "RunOptions": ".options",
    "EngineError": ".errors", "ConversionError": ".errors", "GraphFormatError": ".errors",
    "InputError": ".errors", "OpError": ".errors", "UnsupportedOpsError": ".errors",
    "WeightsError": ".errors",
}
__all__ = list(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'onnxstream_py' has no attribute {name!r}")
