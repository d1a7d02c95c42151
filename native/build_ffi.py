"""cffi build script (API mode) of onnxstream_py's native extension ``onnxstream_py._native``.

The cdef is the text between ``/* CDEF BEGIN */`` and ``/* CDEF END */`` of every public
header in native/ (``osn_internal.h`` excepted), so the headers are the single statement of
what Python may call; the C bodies are every native/*.c. Links Debian's XNNPACK and
pthreadpool (``apt-get install libxnnpack-dev libpthreadpool-dev``). Used by setup.py
(``cffi_modules``), or directly: ``python native/build_ffi.py`` builds in place.
"""
import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PRIVATE_HEADERS = {"osn_internal.h", "osn_scalar.h"}
_CDEF = re.compile(r"/\* CDEF BEGIN \*/(.*?)/\* CDEF END \*/", re.S)


def _public_headers():
    return [h for h in sorted(glob.glob(os.path.join(HERE, "*.h")))
            if os.path.basename(h) not in PRIVATE_HEADERS]


def cdef_text() -> str:
    parts = []
    for h in _public_headers():
        with open(h) as f:
            found = _CDEF.findall(f.read())
        if not found:
            raise RuntimeError(f"{h}: no /* CDEF BEGIN */ ... /* CDEF END */ section")
        parts.extend(found)
    return "\n".join(parts)


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "onnxstream_py._native",
    "\n".join(f'#include "{os.path.basename(h)}"' for h in _public_headers()),
    sources=[os.path.relpath(c, ROOT) for c in sorted(glob.glob(os.path.join(HERE, "*.c")))],
    include_dirs=[os.path.relpath(HERE, ROOT)],
    libraries=["XNNPACK", "pthreadpool", "m"],
    # Portable C: the compiler vectorises for the host (AVX2/AVX-512 on x86, NEON on the Pi).
    extra_compile_args=["-O3", "-std=c11", "-Wall", "-Werror=implicit-function-declaration"],
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(verbose=False)
