#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and registers its
# Jupyter kernel. Idempotent: it reinstalls only when pyproject.toml (or the extras) changed.
# Sourced by env/main.sh and env/test.sh; run it alone with `bash env/bootstrap.sh`.
# PPLLAVA_VENV and PPLLAVA_EXTRAS choose another environment: env/eval.sh builds .venv-eval with
# the `eval` extra this way.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PPLLAVA_VENV:-$root/.venv}"
extras="${PPLLAVA_EXTRAS:-dev,notebooks}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
stamp="$venv/.ppllava-installed"
want="$(cat "$root/pyproject.toml" <(echo "$extras") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing ppllava[$extras] into $venv (first time: several minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[$extras]"
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
