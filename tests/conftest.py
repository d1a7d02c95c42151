import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))


import pytest  # noqa: E402

BACKENDS = ["numpy", "native"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Runs a test on both backends. The native one must load: a missing extension fails
    (it is built by scripts/setup.sh), it is never skipped."""
    return request.param


@pytest.fixture(scope="module")
def ctx():
    """A native context (2-thread pool) for calling native ops directly, shared per module."""
    import onnxstream_py
    from onnxstream_py import ops
    from onnxstream_py.native_context import NativeContext
    ops.load_native()
    c = NativeContext(onnxstream_py.RunOptions(backend="native", threads=2))
    yield c
    c.close()
