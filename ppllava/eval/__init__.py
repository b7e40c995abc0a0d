"""The kit inside lmms-eval, the community harness for multimodal models (the `eval` extra,
`bash env/eval.sh`; docs/evaluation.md):

- `ppllava.eval.lmms`: the lmms-eval model `ppllava` (`--model ppllava --model_args pretrained=DIR,...`).
- `ppllava.eval.world_tasks`: the world's held-out splits as lmms-eval tasks on local files.

lmms-eval 0.7 finds plugin models through the entry-point group "lmms_eval.models"; pyproject.toml
points it at `lmms_eval_models` below, so an installed kit needs no environment variable and no
copy inside lmms-eval. Nothing here imports lmms-eval until lmms-eval itself asks.
"""
from __future__ import annotations

MODEL_NAME = "ppllava"


def lmms_eval_models():
    """The manifests lmms-eval's model registry loads from the entry point."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, simple_class_path="ppllava.eval.lmms.PPLLaVALMMS")]
