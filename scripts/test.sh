#!/usr/bin/env bash
# Set up the dev environment and run the test suite. Extra arguments go to pytest
# (e.g. --runslow to include the slow end-to-end tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh rgbd,dev
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
