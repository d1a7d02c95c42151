#!/usr/bin/env bash
# Set up onnxstream_py on Debian or Raspberry Pi OS: system packages, then the Python package.
#   bash scripts/setup.sh          run-time install (engine + converter)
#   bash scripts/setup.sh --test   also the test dependencies (onnxruntime as the reference oracle, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="convert"
test_pkgs=""     # nginx: tests/test_http_provider.py serves converted models with it (as the user, no service);
                 # openssl: the throwaway CA and certificate of its HTTPS tests
[ "${1:-}" = "--test" ] && extras="convert,test" && test_pkgs="nginx openssl"

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    # XNNPACK + pthreadpool: the native path's math libraries (same packages on Raspberry Pi OS arm64).
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libxnnpack-dev libpthreadpool-dev $test_pkgs >/dev/null
else
    echo "setup.sh: apt-get not found; install XNNPACK and pthreadpool development files yourself" >&2
fi

python3 -m pip install -q --disable-pip-version-check -e ".[${extras}]"
