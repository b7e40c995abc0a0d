#!/usr/bin/env bash
# The main job: execute every tutorial notebook on the default tiny world with papermill,
# writing executed notebooks, figures and metrics under runs/<timestamp>/ (index.html there).
# Creates the environment first if it is missing. Extra arguments go to ppllava.run_notebooks
# (e.g. --smoke, --only 00_operations, --out DIR; --readme-figures then refreshes the README's
# figures in docs/figures/ from this run, if the notebooks drawing them ran without error).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source env/bootstrap.sh
exec python -m ppllava.run_notebooks "$@"
