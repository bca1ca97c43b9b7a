#!/usr/bin/env bash
# Create ./.venv and install forward3d into it (editable) with the given extras.
# Usage: scripts/setup.sh [EXTRAS]     e.g. scripts/setup.sh rgbd,dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-rgbd}"
py="${PYTHON:-python3}"

# open3d-cpu needs libusb-1.0 at import time; install the Debian package when it is missing.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
    echo "[setup] installing Debian package libusb-1.0-0 (needed by open3d)"
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || {
        $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q libusb-1.0-0 >/dev/null; }
fi

# The headless-browser tests (dev extra) drive the system Chromium; install it when it is missing.
# Without root or sudo, say how and carry on (only those tests will then fail, naming the fix).
if [[ ",$extras," == *",dev,"* ]] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
    if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
    if [ "$sudo" = none ]; then
        echo "[setup] chromium + chromium-driver missing (headless browser tests): run 'sudo apt-get install -y chromium chromium-driver'" >&2
    else
        echo "[setup] installing Debian packages chromium chromium-driver (headless browser tests)"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || {
            $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q chromium chromium-driver >/dev/null; } \
            || echo "[setup] could not install chromium; the headless browser tests will fail" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$py" -m venv .venv
fi
# torch is pinned through constraints.txt: any other torch pulls GBs of CUDA packages.
echo "[setup] installing forward3d[$extras]"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$extras]" 2>&1 \
    | grep -v "is neither a file nor a directory" || true
.venv/bin/python -c "import forward3d" || { echo "[setup] forward3d failed to import" >&2; exit 1; }
