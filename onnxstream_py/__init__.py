"""onnxstream_py: a memory-frugal streaming inference engine for ONNX models.

    import onnxstream_py as osp
    with osp.Model("unet_dir", provider="prefetch", options=osp.RunOptions(threads=4)) as m:
        outputs = m.run({"sample": latents, "timestep": t, "encoder_hidden_states": text})

Names are imported lazily, so ``python -m onnxstream_py --threads N`` can configure the
BLAS thread count before numpy is loaded.
"""
from __future__ import annotations

import importlib
import os as _os
import sys as _sys

# OpenBLAS's idle workers spin for 2**28 cycles (~0.1 s) after each call before sleeping;
# on a small machine they then hold the cores that the native backend's thread pool needs
# for the next op (measured: the SD 1.5 UNet's XNNPACK convolutions took 2.1 s instead of
# 1.6 s per run on 2 cores). With 2**8 (measured: 16 still slowed the next XNNPACK call
# by 10-40 ms, 12 and below did not) a worker sleeps as soon as its work ends.
# OpenBLAS reads this when numpy loads it, so it only applies if numpy is not loaded yet
# (always true for the CLI); library users can export it themselves.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "8")

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
