"""The PPLLaVA model and its checkpoint loading (local paths only)."""
from ppllava.model.loading import from_llava_next, load_pretrained, save_pretrained
from ppllava.model.ppllava import PPLLaVA, Projector

__all__ = ["PPLLaVA", "Projector", "from_llava_next", "load_pretrained", "save_pretrained"]
