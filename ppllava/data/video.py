"""Video readers behind one small interface, chosen by name: decord (the default, as the
design card names it), PyAV, and folders of frame images. Tests run the same clips through each.

decord has been unmaintained since 2021 and leaks on some seeks, which is why it sits behind
this interface rather than being called all over the kit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

SAMPLING = ("uniform", "middle", "random", "fps")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class MediaError(ValueError):
    """A media file that is missing, unreadable or empty; the message names the file."""


class VideoReader:
    """frame_count / fps / read(indices) -> (T, H, W, 3) uint8, for one path at a time."""

    name = "base"

    def frame_count(self, path: Path) -> int:
        raise NotImplementedError

    def fps(self, path: Path) -> float:
        raise NotImplementedError

    def read(self, path: Path, indices: List[int]) -> np.ndarray:
        raise NotImplementedError


class DecordReader(VideoReader):
    name = "decord"

    def _open(self, path: Path):
        import decord

        if not Path(path).is_file():
            raise MediaError(f"{path}: no such video file")
        try:
            return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        except Exception as err:  # decord raises its own DECORDError for corrupt files
            raise MediaError(f"{path}: decord cannot decode it ({type(err).__name__}: {str(err)[:200]})") from err

    def frame_count(self, path):
        return len(self._open(path))

    def fps(self, path):
        return float(self._open(path).get_avg_fps())

    def read(self, path, indices):
        reader = self._open(path)
        try:
            return reader.get_batch(list(indices)).asnumpy()
        except Exception as err:
            raise MediaError(f"{path}: decord failed reading frames {indices[:4]}... ({err})") from err


class PyAVReader(VideoReader):
    name = "pyav"

    def _frames(self, path: Path, stop: Optional[int] = None) -> List[np.ndarray]:
        import av

        if not Path(path).is_file():
            raise MediaError(f"{path}: no such video file")
        frames = []
        try:
            with av.open(str(path)) as container:
                for frame in container.decode(video=0):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if stop is not None and len(frames) > stop:
                        break
        except Exception as err:
            raise MediaError(f"{path}: PyAV cannot decode it ({type(err).__name__}: {str(err)[:200]})") from err
        return frames

    def frame_count(self, path):
        return len(self._frames(path))

    def fps(self, path):
        import av

        with av.open(str(path)) as container:
            return float(container.streams.video[0].average_rate)

    def read(self, path, indices):
        frames = self._frames(path, stop=max(indices))
        return np.stack([frames[i] for i in indices])


class FrameFolderReader(VideoReader):
    """A directory of frame images, in file-name order; fps is taken as given by the caller."""

    name = "frames"

    def _files(self, path: Path) -> List[Path]:
        if not Path(path).is_dir():
            raise MediaError(f"{path}: no such frame folder")
        return sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def frame_count(self, path):
        return len(self._files(path))

    def fps(self, path):
        return float("nan")

    def read(self, path, indices):
        from PIL import Image

        files = self._files(path)
        return np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in indices])


READERS: Dict[str, Callable[[], VideoReader]] = {"decord": DecordReader, "pyav": PyAVReader, "frames": FrameFolderReader}


def get_reader(name: str) -> VideoReader:
    if name not in READERS:
        raise ValueError(f"video reader must be one of {tuple(READERS)}, got {name!r}")
    return READERS[name]()


def sample_indices(total: int, num: int, mode: str = "uniform", *, rng: Optional[np.random.Generator] = None,
                   video_fps: Optional[float] = None, fps: Optional[float] = None) -> Tuple[List[int], int]:
    """Which `num` frames of a `total`-frame video to read, and how many of them are repeats.

    uniform: the middle frame of `num` equal segments; middle: `num` consecutive frames around the
    centre; random: one random frame per segment (needs `rng`); fps: frames at `fps` per second
    (needs `video_fps`), as many as fit, then uniform among those if more than `num`.
    A video with fewer frames than asked repeats frames in order (each index shows up
    ceil(num / total) times at most) and says how many repeats it made: never a crash later on shapes.
    """
    if total < 1:
        raise MediaError("the video has no frames")
    if num < 1:
        raise ValueError(f"num frames must be >= 1, got {num}")
    if mode not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {mode!r}")
    if total < num:
        indices = [int(i * total / num) for i in range(num)]
        return indices, num - total
    if mode == "uniform":
        return [int((i + 0.5) * total / num) for i in range(num)], 0
    if mode == "middle":
        start = (total - num) // 2
        return list(range(start, start + num)), 0
    if mode == "random":
        if rng is None:
            raise ValueError("sampling 'random' needs an rng")
        edges = np.linspace(0, total, num + 1)
        return [int(rng.integers(int(a), max(int(a) + 1, int(b)))) for a, b in zip(edges[:-1], edges[1:])], 0
    if video_fps is None or fps is None or not video_fps > 0:
        raise ValueError("sampling 'fps' needs the video's fps and the target fps")
    step = video_fps / fps
    candidates = [int(i * step) for i in range(int(total / step))] or [0]
    if len(candidates) > num:
        candidates = [candidates[int((i + 0.5) * len(candidates) / num)] for i in range(num)]
    if len(candidates) < num:  # too short at this rate: repeat, visibly
        repeated = num - len(candidates)
        return [candidates[int(i * len(candidates) / num)] for i in range(num)], repeated
    return candidates, 0
