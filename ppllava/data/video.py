"""Video readers behind one small interface, chosen by name: decord (the default, as the
design card names it), PyAV, and folders of frame images. Tests run the same clips through each.

decord has been unmaintained since 2021 and leaks on some seeks, which is why it sits behind
this interface rather than being called all over the kit. It also refuses files PyAV decodes
(GIFs, and frames of some widths: 1, 16 and 48 pixels fail where 30 and 64 read): the decord
reader reads those with PyAV, which gives the same frames, counts them in `fallbacks` and warns once.

Every fault is a MediaError (a ValueError) naming the file; the dataset adds the record.
"""
from __future__ import annotations

import bisect
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ppllava.data.media import MediaError, image_size, read_image

__all__ = ["MediaError", "VideoReader", "DecordReader", "PyAVReader", "FrameFolderReader", "get_reader",
           "sample_indices", "read_image", "SAMPLING", "IMAGE_SUFFIXES"]

SAMPLING = ("uniform", "middle", "random", "fps")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class VideoReader:
    """frame_count / fps / read(indices) -> (T, H, W, 3) uint8, for one path at a time."""

    name = "base"

    def frame_count(self, path: Path) -> int:
        raise NotImplementedError

    def fps(self, path: Path) -> float:
        raise NotImplementedError

    def read(self, path: Path, indices: List[int]) -> np.ndarray:
        raise NotImplementedError


def _check_indices(path, indices: Sequence[int], total: int) -> List[int]:
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"{path}: no frame indices to read")
    outside = [i for i in indices if not 0 <= i < total]
    if outside:
        raise MediaError(f"{path}: frame indices {outside[:4]} are outside its {total} frames")
    return indices


def _short(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).strip()[:200]}"


class PyAVReader(VideoReader):
    """Decodes only what is sampled: the frame count comes from the stream's metadata (a decoding pass
    that converts nothing where it has none); `read` seeks to the keyframe before each wanted frame,
    decodes forward and converts only the wanted frames, so memory holds the sampled frames, not the video.

    Frame i is the i-th frame in presentation order, found by its timestamp (one pass over the packets,
    no decoding, gives them all); a stream without usable timestamps is decoded in order from the start,
    still converting only the wanted frames. Either way the frames equal a full decode's."""

    name = "pyav"

    def _open(self, path):
        import av

        if not Path(path).is_file():
            raise MediaError(f"{path}: no such video file")
        try:
            container = av.open(str(path))
        except av.FFmpegError as err:
            raise MediaError(f"{path}: PyAV cannot open it ({_short(err)})") from err
        if not container.streams.video:
            container.close()
            raise MediaError(f"{path}: has no video stream")
        return container

    def frame_count(self, path):
        """The frames `read` can index: its own count of the stream's packets (demuxed, not decoded),
        never the header's claim, which a container may overstate."""
        import av

        try:
            with self._open(path) as container:
                return len(self._timestamps(container, container.streams.video[0])[0])
        except av.FFmpegError as err:
            raise MediaError(f"{path}: PyAV cannot read it ({_short(err)})") from err

    def fps(self, path):
        with self._open(path) as container:
            rate = container.streams.video[0].average_rate
        if not rate:
            raise MediaError(f"{path}: the video stream states no frame rate")
        return float(rate)

    def read(self, path, indices):
        import av

        try:
            with self._open(path) as container:
                stream = container.streams.video[0]
                timestamps, keyframes = self._timestamps(container, stream)
                indices = _check_indices(path, indices, len(timestamps))
                wanted = sorted(set(indices))
                frames: Dict[int, np.ndarray] = {}
                if None not in timestamps and len(set(timestamps)) == len(timestamps):
                    frames = self._seek_read(container, stream, wanted, timestamps, keyframes)
            missing = [i for i in wanted if i not in frames]
            if missing:  # no usable timestamps, or a seek that missed: decode in order from the start
                frames.update(self._in_order(path, missing))
        except av.FFmpegError as err:
            raise MediaError(f"{path}: PyAV cannot decode it ({_short(err)})") from err
        return np.stack([frames[i] for i in indices])

    @staticmethod
    def _timestamps(container, stream) -> Tuple[list, list]:
        """Presentation timestamps of every frame in order, and those of the keyframes:
        one pass over the packets, decoding nothing."""
        pts, keyframes = [], []
        for packet in container.demux(stream):
            if packet.size == 0:  # the end-of-stream flush packet
                continue
            if packet.is_discard:  # dropped by the decoder (edit lists): not a frame, so no usable timestamps
                pts.append(None)
                continue
            pts.append(packet.pts)
            if packet.is_keyframe and packet.pts is not None:
                keyframes.append(packet.pts)
        return (pts if None in pts else sorted(pts)), sorted(keyframes)

    @staticmethod
    def _seek_read(container, stream, wanted: List[int], timestamps: list,
                   keyframes: List[int]) -> Dict[int, np.ndarray]:
        """The wanted frames by timestamp, one seek per keyframe they follow. A frame not met (one before
        the first keyframe, a seek that landed late, a format that cannot seek) is left to the in-order pass."""
        import av

        groups: Dict[int, Dict[int, int]] = {}  # keyframe pts -> {pts: index} of the wanted frames after it
        for i in wanted:
            k = bisect.bisect_right(keyframes, timestamps[i]) - 1  # the last keyframe at or before frame i
            if k >= 0:
                groups.setdefault(keyframes[k], {})[timestamps[i]] = i
        frames = {}
        for start, targets in groups.items():
            try:
                # Seeking to a keyframe's pts lands on it in mp4, mkv and gif (tested); a demuxer that lands
                # earlier costs decoding, one that lands later misses frames, which the in-order pass reads.
                container.seek(start, stream=stream, backward=True)
            except av.FFmpegError:  # not seekable: the in-order pass reads the rest, the same frames
                return frames
            last = max(targets)
            for frame in container.decode(stream):
                if frame.pts is None:
                    return frames
                if frame.pts in targets:
                    frames[targets[frame.pts]] = frame.to_ndarray(format="rgb24")
                if frame.pts >= last:
                    break
        return frames

    def _in_order(self, path, wanted: List[int]) -> Dict[int, np.ndarray]:
        frames, want, last, seen = {}, set(wanted), max(wanted), 0
        with self._open(path) as container:
            for seen, frame in enumerate(container.decode(video=0), start=1):
                if seen - 1 in want:
                    frames[seen - 1] = frame.to_ndarray(format="rgb24")
                if seen > last:
                    break
        if len(frames) < len(want):
            raise MediaError(f"{path}: frames {sorted(want - set(frames))[:4]} are past the {seen} frames that decode "
                             f"(its packets or metadata promise more)")
        return frames


class DecordReader(VideoReader):
    """decord, and PyAV for each file decord cannot open or decode: PyAV's frames are the same (the
    tests compare them), such files are counted in `fallbacks`, and the first is warned about."""

    name = "decord"

    def __init__(self):
        self.pyav = PyAVReader()
        self.fallbacks = 0  # files read with PyAV because decord could not
        self._fallen: set = set()  # those files: every later call on them goes to PyAV, for one frame count

    def frame_count(self, path):
        return self._either(path, lambda reader: len(reader), "frame_count")

    def fps(self, path):
        return self._either(path, lambda reader: float(reader.get_avg_fps()), "fps")

    def read(self, path, indices):
        return self._either(path, lambda reader: reader.get_batch(_check_indices(path, indices, len(reader))).asnumpy(),
                            "read", indices)

    def _either(self, path, use_decord: Callable, method: str, *args):
        """`use_decord(decord's reader)`, or PyAV's `method(path, *args)` when decord refuses the file."""
        import decord

        if not Path(path).is_file():
            raise MediaError(f"{path}: no such video file")
        refusal = "refused it before"
        if str(path) not in self._fallen:
            try:
                return use_decord(decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1))
            # decord raises RuntimeError for a file it cannot open, DECORDError for frames it cannot decode or
            # copy out (e.g. frames 16 or 48 pixels wide)
            except (decord.DECORDError, RuntimeError) as err:
                refusal = _short(err)
        try:
            result = getattr(self.pyav, method)(path, *args)
        except MediaError as err:
            raise MediaError(f"{path}: decord cannot read it ({refusal}), nor can PyAV ({err})") from err
        if str(path) not in self._fallen:
            self._fallen.add(str(path))
            self.fallbacks += 1
            if self.fallbacks == 1:
                warnings.warn(f"decord cannot read {path} ({refusal[:120]}); reading it, and any other such file, "
                              "with PyAV (the same frames); the reader's `fallbacks` counts them", stacklevel=3)
        return result


class FrameFolderReader(VideoReader):
    """A directory of frame images, in file-name order, each read by `read_image`; fps is taken as given
    by the caller. The frames read (and the first) must share one size."""

    name = "frames"

    def _files(self, path: Path) -> List[Path]:
        if not Path(path).is_dir():
            raise MediaError(f"{path}: no such frame folder")
        files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            others = sorted(p.name for p in Path(path).iterdir())
            raise MediaError(f"{path}: the frame folder holds no frame images ({', '.join(IMAGE_SUFFIXES)})"
                             + (f"; it holds {others[:3]}" if others else ""))
        return files

    def frame_count(self, path):
        return len(self._files(path))

    def fps(self, path):
        return float("nan")

    def read(self, path, indices):
        files = self._files(path)
        indices = _check_indices(path, indices, len(files))
        frames = {i: read_image(files[i]) for i in sorted(set(indices))}
        height, width = image_size(files[0])
        for i, frame in frames.items():
            if frame.shape[:2] != (height, width):
                raise MediaError(f"{path}: frame {files[i].name} is {frame.shape[0]}x{frame.shape[1]} (HxW) but "
                                 f"{files[0].name} is {height}x{width}; a folder's frames must share one size")
        return np.stack([frames[i] for i in indices])


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
    (needs `video_fps` and `fps`, both > 0), as many as fit, then uniform among those if more than `num`.
    A video with fewer frames than asked repeats frames in order (each index shows up
    ceil(num / total) times at most) and says how many repeats it made: never a crash later on shapes.
    """
    if total < 1:
        raise MediaError("the video has no frames")
    if num < 1:
        raise ValueError(f"num frames must be >= 1, got {num}")
    if mode not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {mode!r}")
    if mode == "random" and rng is None:
        raise ValueError("sampling 'random' needs an rng")
    if mode == "fps":  # `not x > 0` also refuses NaN (a frame folder's fps)
        if fps is None or not fps > 0:
            raise ValueError(f"sampling 'fps' needs fps > 0, got fps={fps!r}")
        if video_fps is None or not video_fps > 0:
            raise ValueError(f"sampling 'fps' needs the video's frame rate > 0, got video_fps={video_fps!r}")
    if total < num:
        indices = [int(i * total / num) for i in range(num)]
        return indices, num - total
    if mode == "uniform":
        return [int((i + 0.5) * total / num) for i in range(num)], 0
    if mode == "middle":
        start = (total - num) // 2
        return list(range(start, start + num)), 0
    if mode == "random":
        edges = np.linspace(0, total, num + 1)
        return [int(rng.integers(int(a), max(int(a) + 1, int(b)))) for a, b in zip(edges[:-1], edges[1:])], 0
    step = video_fps / fps
    candidates = [int(i * step) for i in range(int(total / step))] or [0]
    if len(candidates) > num:
        candidates = [candidates[int((i + 0.5) * len(candidates) / num)] for i in range(num)]
    if len(candidates) < num:  # too short at this rate: repeat, visibly
        repeated = num - len(candidates)
        return [candidates[int(i * len(candidates) / num)] for i in range(num)], repeated
    return candidates, 0
