#!/usr/bin/env bash
# The lmms-eval tests, in an environment of their own: .venv-eval with ppllava[dev,notebooks,eval].
# lmms-eval pins av<16 and brings datasets, pandas, openai, wandb, ...; keeping it out of .venv
# means the main install never carries it. Idempotent like bootstrap.sh: it reinstalls only when
# pyproject.toml changed. Extra arguments go to pytest (e.g. -x, -k mc).
#
#     bash env/eval.sh                                     # build .venv-eval, run `pytest -m eval`
#     .venv-eval/bin/python -m lmms_eval --model ppllava ...   # afterwards, by hand (docs/evaluation.md)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PPLLAVA_EVAL_VENV:-$root/.venv-eval}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x "$venv/bin/python" ]; then
  echo "[eval] creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
stamp="$venv/.ppllava-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[eval] installing ppllava[dev,notebooks,eval] into $venv (first time: several minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[dev,notebooks,eval]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
# Nothing may reach a hub: the tasks read local files, the model loads from a local directory.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd "$root"
exec python -m pytest -m eval "$@"
