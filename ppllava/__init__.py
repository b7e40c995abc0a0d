"""PPLLaVA: prompt-guided pooling for video LLMs. `ppllava.PPLLaVAProcessor` is imported on first
use, so `import ppllava.config` stays light."""

__all__ = ["PPLLaVAProcessor"]


def __getattr__(name: str):
    if name == "PPLLaVAProcessor":
        from ppllava.processor import PPLLaVAProcessor

        return PPLLaVAProcessor
    raise AttributeError(f"module 'ppllava' has no attribute {name!r}")
