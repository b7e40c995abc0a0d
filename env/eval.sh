#!/usr/bin/env bash
# The lmms-eval tests, in an environment of their own: .venv-eval with ppllava[dev,notebooks,eval].
# lmms-eval pins av<16 and brings datasets, pandas, openai, wandb, ...; keeping it out of .venv
# means the main install never carries it. .venv-eval is layered on .venv (PPLLAVA_BASE_VENV): it
# holds only what lmms-eval adds or pins differently (~1 GB), not a second copy of torch (~6 GB, which
# filled CI's disk). Built by env/bootstrap.sh, idempotent like it.
# Extra arguments go to pytest (e.g. -x, -k mc).
#
#     bash env/eval.sh                                         # build .venv-eval, run `pytest -m eval`
#     .venv-eval/bin/python -m lmms_eval --model ppllava ...   # afterwards, by hand (docs/evaluation.md)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source env/bootstrap.sh  # .venv, the base
PPLLAVA_BASE_VENV="$VIRTUAL_ENV" PPLLAVA_VENV="${PPLLAVA_EVAL_VENV:-$PWD/.venv-eval}" \
  PPLLAVA_EXTRAS="dev,notebooks,eval" source env/bootstrap.sh
exec python -m pytest -m eval "$@"
