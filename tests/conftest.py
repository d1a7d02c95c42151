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
