#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and registers its
# Jupyter kernel. Idempotent: it reinstalls only when pyproject.toml changed.
# Sourced by env/main.sh and env/test.sh; run it alone with `bash env/bootstrap.sh`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PPLLAVA_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
stamp="$venv/.ppllava-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing ppllava[dev,notebooks] into $venv (first time: several minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[dev,notebooks]"
  # A kernel named after the project, so papermill and JupyterLab run the notebooks in
  # this environment rather than whatever "python3" points to.
  "$venv/bin/python" -m ipykernel install --sys-prefix --name ppllava \
      --display-name "Python (ppllava)" >/dev/null
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
# Nothing in this kit may reach a model hub at run time.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
