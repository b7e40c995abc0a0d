#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and registers its
# Jupyter kernel. Idempotent: it reinstalls only when pyproject.toml (or the extras) changed.
# Sourced by env/main.sh and env/test.sh; run it alone with `bash env/bootstrap.sh`.
# PPLLAVA_VENV and PPLLAVA_EXTRAS choose another environment: env/eval.sh builds .venv-eval with
# the `eval` extra this way. PPLLAVA_BASE_VENV layers that environment on another one: the base's
# site-packages come after its own on sys.path (a .pth file), so pip installs only what the base
# lacks or pins differently (lmms-eval's av<16) and torch's ~5 GB is not copied a second time.
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
base="${PPLLAVA_BASE_VENV:-}"
base_stamp=/dev/null
if [ -n "$base" ]; then
  [ -x "$base/bin/python" ] || { echo "[bootstrap] base environment $base does not exist" >&2; exit 1; }
  site() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
  echo "$(site "$base")" > "$(site "$venv")/_ppllava_base.pth"
  base_stamp="$base/.ppllava-installed"
fi
stamp="$venv/.ppllava-installed"
# A layered environment is reinstalled when its base was.
want="$(cat "$root/pyproject.toml" <(echo "$extras") "$base_stamp" | sha256sum | cut -d' ' -f1)"
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
