"""onnxstream_py: a memory-frugal streaming inference engine for ONNX models.

    import onnxstream_py as osp
    with osp.Model("unet_dir", provider="prefetch", options=osp.RunOptions(threads=4)) as m:
        outputs = m.run({"sample": latents, "timestep": t, "encoder_hidden_states": text})
"""
from .errors import EngineError, GraphFormatError, InputError, OpError, UnsupportedOpsError, WeightsError
from .model import Model
from .options import RunOptions

__version__ = "0.1.0"
__all__ = ["Model", "RunOptions", "EngineError", "GraphFormatError", "InputError", "OpError",
           "UnsupportedOpsError", "WeightsError", "__version__"]
