"""Batches several test files build the same way."""
import numpy as np


def video_and_image_inputs(processor):
    """The processor's batch of two samples on random pixels: an 8-frame 48 x 80 video and a 50 x 120
    picture, each with "what colour is the star ?" in the processor's chat template."""
    rng = np.random.default_rng(0)
    frames, picture = rng.integers(0, 256, (8, 48, 80, 3), dtype=np.uint8), rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)
    texts = [processor.apply_chat_template([{"from": "human", "value": f"{p}\nwhat colour is the star ?"}])
             for p in ("<video>", "<image>")]
    return processor(texts, images=[picture], videos=[frames])
