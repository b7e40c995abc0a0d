#!/usr/bin/env bash
# The test suite, CPU only. Creates the environment first if it is missing.
# Extra arguments go to pytest (e.g. -k pooling, -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source env/bootstrap.sh
exec python -m pytest "$@"
