"""Media read as they are, or refused by name (issue #13 §1): the channel layout is never guessed,
every image mode becomes the RGB the tower takes (checked by pixel value), files decord refuses are
read by PyAV and counted, the seeking PyAV reader equals a full decode, and every bad file, frame or
folder is a MediaError naming it. Every file here is made by the test."""
import struct
import warnings
import zlib

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ppllava.config import PPLLaVAConfig
from ppllava.data.dataset import LLaVADataset, MediaProcessor
from ppllava.data.media import MediaError, read_image
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.video import DecordReader, PyAVReader, get_reader, sample_indices

CONFIG = PPLLaVAConfig.from_name("tiny")
RED = (255, 0, 0)


def write_video(path, frames, codec="libx264", pix_fmt="yuv420p", gop=None, options=None, fps=8):
    """(T, H, W, 3) uint8 -> a video file through PyAV (mp4, mkv or gif by the path)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if gop:
            stream.gop_size = gop
        stream.options = options or ({"crf": "10"} if codec == "libx264" else {})
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def moving(frames, height, width, seed=0):
    """Frames that change every step (so a wrong frame index shows), with noise against flat coding."""
    y, x = np.mgrid[:height, :width]
    ramp = np.stack([np.stack([x * 4 + t * 3, y * 5 + t * 7, (x + y) * 2 + t], -1) for t in range(frames)])
    noise = np.random.default_rng(seed).integers(0, 24, ramp.shape)
    return ((ramp + noise) % 256).astype(np.uint8)


def full_decode(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def write_png16(path, values, colour_type):
    """A 16-bit PNG written by hand (Pillow writes 16-bit greyscale only): 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    height, width = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.fixture(scope="module")
def processor():
    return MediaProcessor(CONFIG)


@pytest.fixture(scope="module")
def tokenizer():
    return build_world_tokenizer()


def red_value(processor):
    """What a red pixel becomes in the processors' output (normalized), from a picture nobody could misread."""
    return processor.image(np.full((64, 64, 3), RED, np.uint8))[0][0, :, 32, 32]


# -- channel layout ------------------------------------------------------------------------------

@pytest.mark.parametrize("height", [1, 2, 3, 4])
def test_short_red_pictures_reach_the_processors_red_with_their_size(processor, height):
    image = np.full((height, 40, 3), RED, np.uint8)
    red = red_value(processor)
    pixels, size, crops = processor.image(image)
    assert size == [height, 40]
    torch.testing.assert_close(pixels[0, :, 32, 32], red)  # centre of the whole-picture crop
    video = processor.video(np.stack([image, image]))
    assert video.shape == (2, 3, 64, 64)
    torch.testing.assert_close(video[:, :, 32, 32], red.expand(2, 3))


def test_processors_refuse_pixels_that_are_not_hwc_uint8_rgb(processor):
    for bad in (np.zeros((3, 8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32),
                np.zeros((0, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"image must be uint8 RGB \(H, W, 3\), got .*" + str(bad.shape[-1])):
            processor.image(bad)
    with pytest.raises(ValueError, match=r"video frames must be uint8 RGB \(T, H, W, 3\), got uint8 of shape \(8, 8, 3"):
        processor.video(np.zeros((8, 8, 3), np.uint8))


def test_a_one_pixel_tall_image_file_reaches_the_model_red(tmp_path, processor, tokenizer):
    Image.fromarray(np.full((1, 40, 3), RED, np.uint8)).save(tmp_path / "strip.png")
    record = {"id": "strip", "image": "strip.png",
              "conversations": [{"from": "human", "value": "<image>\nwhat colour ?"}, {"from": "gpt", "value": "red"}]}
    sample = LLaVADataset([record], CONFIG, tokenizer, media_root=tmp_path)[0]
    assert sample.image_sizes == [[1, 40]]
    torch.testing.assert_close(sample.pixels[0, 0, :, 32, 32], red_value(processor))


# -- image modes, by pixel value -----------------------------------------------------------------

def _palette(path, transparent=None):
    image = Image.new("P", (3, 2))
    image.putpalette([0, 0, 0, 200, 10, 20, 5, 250, 60])
    image.putdata([1, 2, 0, 2, 1, 1])
    if transparent is not None:
        image.info["transparency"] = transparent
    image.save(path)
    return [[(200, 10, 20), (5, 250, 60), (0, 0, 0)], [(5, 250, 60), (200, 10, 20), (200, 10, 20)]]


def _grey16(path):
    values = np.array([[0, 0x00FF, 0x0100], [0x1234, 0x8080, 0xFFFF]], np.uint16)
    Image.fromarray(values).save(path)
    return [[(v >> 8,) * 3 for v in row] for row in values.tolist()]  # the high byte, in all three channels


def _grey16_from_8bit(path):
    eight = np.array([[0, 1, 2], [127, 128, 255]], np.uint16)
    Image.fromarray(eight * 257).save(path)  # 8-bit values stretched to 16 bits read back exactly
    return [[(v,) * 3 for v in row] for row in eight.tolist()]


def _grey8(path):
    values = np.array([[0, 7, 128], [200, 254, 255]], np.uint8)
    Image.fromarray(values).save(path)
    return [[(v,) * 3 for v in row] for row in values.tolist()]


def _bilevel(path):
    Image.fromarray(np.array([[True, False], [False, True]])).save(path)
    return [[(255,) * 3, (0,) * 3], [(0,) * 3, (255,) * 3]]


def _rgba(path):  # alpha dropped, colour kept, even where fully transparent
    Image.fromarray(np.array([[[10, 20, 30, 0], [40, 50, 60, 128], [70, 80, 90, 255]]], np.uint8)).save(path)
    return [[(10, 20, 30), (40, 50, 60), (70, 80, 90)]]


def _grey_alpha(path):
    Image.fromarray(np.array([[[9, 0], [99, 255]]], np.uint8), mode="LA").save(path)
    return [[(9,) * 3, (99,) * 3]]


def _rgb16(path):
    write_png16(path, np.array([[[0x1234, 0xFF00, 0x00FF], [0xFFFF, 0, 0x8000]]], np.uint16), 2)
    return [[(0x12, 0xFF, 0x00), (0xFF, 0, 0x80)]]


def _rgba16(path):
    write_png16(path, np.array([[[0x1234, 0xFF00, 0x00FF, 0], [0xABCD, 1, 0x7FFF, 0xFFFF]]], np.uint16), 6)
    return [[(0x12, 0xFF, 0x00), (0xAB, 0, 0x7F)]]


MODES = {"16-bit grey": _grey16, "16-bit grey of 8-bit values": _grey16_from_8bit, "8-bit grey": _grey8,
         "1-bit": _bilevel, "palette": _palette,
         "palette with a transparent entry": lambda p: _palette(p, transparent=2),
         "palette with alpha per entry": lambda p: _palette(p, transparent=bytes([255, 0, 128])),
         "RGBA": _rgba, "grey + alpha": _grey_alpha, "16-bit RGB": _rgb16, "16-bit RGBA": _rgba16}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_image_mode_reads_as_rgb_by_pixel_value(tmp_path, mode):
    expected = np.array(MODES[mode](tmp_path / "picture.png"), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning: nothing said and ignored
        image = read_image(tmp_path / "picture.png")
    assert image.dtype == np.uint8 and image.shape == expected.shape
    np.testing.assert_array_equal(image, expected)


def test_a_16_bit_picture_reaches_the_dataset_grey_not_white(tmp_path, processor, tokenizer):
    Image.fromarray(np.full((64, 64), 0x8000, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((64, 64, 3), 0x80, np.uint8)).save(tmp_path / "grey8.png")
    turns = [{"from": "human", "value": "<image>\nwhat colour ?"}, {"from": "gpt", "value": "red"}]
    records = [{"id": name, "image": f"{name}.png", "conversations": turns} for name in ("grey16", "grey8")]
    dataset = LLaVADataset(records, CONFIG, tokenizer, media_root=tmp_path)
    torch.testing.assert_close(dataset[0].pixels, dataset[1].pixels)


@pytest.mark.parametrize("mode,data", [("I", 70000), ("F", 0.5)])
def test_pixels_without_a_bit_depth_are_refused_by_name(tmp_path, mode, data):
    path = tmp_path / f"deep-{mode}.tif"
    Image.new(mode, (4, 3), data).save(path)
    with pytest.raises(MediaError, match=rf"deep-{mode}\.tif: pixel mode '{mode}'"):
        read_image(path)


CORRUPT = {"garbage": lambda good: b"not an image at all" * 20, "empty": lambda good: b"",
           "truncated": lambda good: good[: len(good) // 2], "header only": lambda good: good[:40]}


@pytest.mark.parametrize("fault", list(CORRUPT))
def test_corrupt_image_files_are_media_errors_naming_the_file(tmp_path, fault, tokenizer):
    Image.fromarray(moving(1, 64, 64)[0]).save(tmp_path / "good.png")
    path = tmp_path / f"bad {fault}.png"
    path.write_bytes(CORRUPT[fault]((tmp_path / "good.png").read_bytes()))
    with pytest.raises(MediaError, match=f"bad {fault}.png: cannot decode the image"):
        read_image(path)
    with pytest.raises(MediaError, match="nowhere.png: no such image file"):
        read_image(tmp_path / "nowhere.png")
    # Through the dataset the error also names the record, and skip_bad counts it instead of failing.
    record = {"id": "broken", "image": path.name,
              "conversations": [{"from": "human", "value": "<image>\nwhat ?"}, {"from": "gpt", "value": "a star"}]}
    with pytest.raises(ValueError, match=rf"broken.*bad {fault}\.png"):
        LLaVADataset([record], CONFIG, tokenizer, media_root=tmp_path)[0]
    skipped = LLaVADataset([record], CONFIG, tokenizer, media_root=tmp_path, skip_bad=True)[0]
    assert path.name in skipped["skipped"] and skipped["id"] == "broken"


# -- videos decord refuses: PyAV reads them, counted -----------------------------------------------

REFUSED = {  # name: (frames, height, width, suffix, codec, pix_fmt)
    "1x1": (6, 1, 1, "mp4", "libx264", "yuv444p"),
    "16x16": (6, 16, 16, "mp4", "libx264", "yuv420p"),
    "48x48": (6, 48, 48, "mp4", "libx264", "yuv420p"),
    "portrait 48x96": (6, 96, 48, "mp4", "libx264", "yuv420p"),
    "gif": (6, 32, 32, "gif", "gif", "rgb8"),
}


def _refused(tmp_path, name):
    frames, height, width, suffix, codec, pix_fmt = REFUSED[name]
    return write_video(tmp_path / f"{name.replace(' ', '_')}.{suffix}", moving(frames, height, width), codec, pix_fmt)


@pytest.mark.parametrize("name", list(REFUSED))
def test_videos_decord_refuses_are_read_by_pyav_with_the_same_frames(tmp_path, name):
    import decord

    path = _refused(tmp_path, name)
    with pytest.raises(decord.DECORDError):  # the case is real: decord itself cannot read this file
        decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1).get_batch([0]).asnumpy()
    reader = get_reader("decord")
    with pytest.warns(UserWarning, match=rf"decord cannot read .*{path.name}.*PyAV"):
        count = reader.frame_count(path)  # decord opens some of these and fails only on reading frames
        frames = reader.read(path, [0, 5, 2, 2])
    assert count == 6 and reader.fallbacks == 1
    np.testing.assert_array_equal(frames, full_decode(path)[[0, 5, 2, 2]])


def test_fallbacks_are_counted_per_file_and_warned_once(tmp_path):
    paths = [_refused(tmp_path, name) for name in REFUSED]
    readable = write_video(tmp_path / "fine.mp4", moving(6, 64, 64))
    reader = DecordReader()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in paths + [readable]:
            reader.read(path, list(range(reader.frame_count(path))))
            reader.read(path, [1])
    assert reader.fallbacks == len(paths)  # files, not calls; the file decord reads is not one
    assert len([w for w in caught if "decord cannot read" in str(w.message)]) == 1
    # decord and PyAV agree where both read a file (the same bound as tests/test_data.py's).
    assert np.abs(reader.read(readable, [0, 3, 5]).astype(int) - PyAVReader().read(readable, [0, 3, 5])).max() <= 2


@pytest.mark.parametrize("content", [b"not a video at all" * 100, b""])
@pytest.mark.parametrize("reader", ["decord", "pyav"])
def test_corrupt_videos_are_media_errors_naming_the_file(tmp_path, reader, content):
    path = tmp_path / "broken clip.mp4"
    path.write_bytes(content)
    video = get_reader(reader)
    for call in (lambda: video.frame_count(path), lambda: video.read(path, [0]), lambda: video.fps(path)):
        with pytest.raises(MediaError, match="broken clip.mp4"):
            call()
    assert getattr(video, "fallbacks", 0) == 0  # a file nothing reads is an error, not a fallback
    with pytest.raises(MediaError, match="nowhere.mp4: no such video file"):
        video.read(tmp_path / "nowhere.mp4", [0])


@pytest.mark.parametrize("reader", ["decord", "pyav"])
def test_frame_indices_past_the_end_name_the_file_and_its_length(tmp_path, reader):
    path = write_video(tmp_path / "short.mp4", moving(6, 64, 64))
    with pytest.raises(MediaError, match=r"short.mp4: frame indices \[6, -1\] are outside its 6 frames"):
        get_reader(reader).read(path, [0, 6, -1])


# -- the seeking PyAV reader equals a full decode ---------------------------------------------------

B_FRAMES = "bframes=3:b-adapt=0:scenecut=0"  # B-frames reorder decoding against presentation order
ENCODINGS = {  # several GOPs each
    "h264 gop 7.mp4": dict(gop=7),
    "h264 b-frames.mp4": dict(options={"crf": "18", "x264-params": f"{B_FRAMES}:keyint=10:min-keyint=10"}),
    "h264 open gop.mkv": dict(options={"crf": "18", "x264-params": f"{B_FRAMES}:keyint=12:open-gop=1"}),
    "mpeg4 b-frames.mp4": dict(codec="mpeg4", gop=9, options={"bf": "2"}),
    "animated.gif": dict(codec="gif", pix_fmt="rgb8"),
}


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_seeking_reader_equals_a_full_decode(tmp_path, name, monkeypatch):
    path = write_video(tmp_path / name, moving(60, 48, 64), **ENCODINGS[name])
    full = full_decode(path)
    reader = PyAVReader()
    # The test must exercise seeking: the in-order pass (the fallback for streams without timestamps)
    # is not allowed here.
    monkeypatch.setattr(PyAVReader, "_in_order", lambda *a: pytest.fail("fell back to decoding in order"))
    assert reader.frame_count(path) == len(full) == 60
    rng = np.random.default_rng(0)
    picks = [list(range(60)), [59, 0, 31, 31, 7], [0], [59], sample_indices(60, 16)[0]]
    picks += [sorted(rng.choice(60, 16, replace=False).tolist()) for _ in range(8)]
    for indices in picks:
        np.testing.assert_array_equal(reader.read(path, indices), full[indices], err_msg=f"{name}: {indices}")


def test_in_order_pass_equals_a_full_decode(tmp_path, monkeypatch):
    """Streams whose packets carry no usable timestamps are decoded in order, converting only what is asked."""
    path = write_video(tmp_path / "clip.mp4", moving(30, 48, 64), gop=5)
    full = full_decode(path)
    monkeypatch.setattr(PyAVReader, "_timestamps", staticmethod(lambda container, stream: ([None] * 30, [])))
    reader = PyAVReader()
    for indices in ([29, 0, 3, 3], list(range(30)), [17]):
        np.testing.assert_array_equal(reader.read(path, indices), full[indices])
    monkeypatch.setattr(PyAVReader, "_timestamps", staticmethod(lambda container, stream: ([None] * 40, [])))
    with pytest.raises(MediaError, match=r"clip.mp4: frames \[35\] are past the 30 frames that decode"):
        reader.read(path, [35])


# -- frame folders ------------------------------------------------------------------------------

def _folder(tmp_path, count=6, size=(32, 48)):
    folder = tmp_path / "frames of clip"
    folder.mkdir()
    for i, frame in enumerate(moving(count, *size)):
        Image.fromarray(frame).save(folder / f"{i:04d}.png")
    return folder


@pytest.mark.parametrize("odd", ["0000.png", "0003.png"])
def test_a_frame_folder_with_mixed_sizes_names_folder_and_frame(tmp_path, odd):
    folder = _folder(tmp_path)
    Image.fromarray(moving(1, 32, 40)[0]).save(folder / odd)
    with pytest.raises(MediaError, match=r"frames of clip: frame 000\d.png is 32x\d+ .* but 0000.png is 32x\d+"):
        get_reader("frames").read(folder, [1, 3, 5])


@pytest.mark.parametrize("content", [b"", b"garbage" * 30])
def test_a_corrupt_frame_names_folder_and_frame(tmp_path, content):
    folder = _folder(tmp_path)
    (folder / "0004.png").write_bytes(content)
    reader = get_reader("frames")
    assert reader.read(folder, [0, 5]).shape == (2, 32, 48, 3)  # frames not asked for are not read
    with pytest.raises(MediaError, match=r"frames of clip[/\\]0004.png: cannot decode the image"):
        reader.read(folder, [0, 4])


def test_frame_folders_that_hold_no_frames_are_named(tmp_path):
    reader = get_reader("frames")
    empty = tmp_path / "empty clip"
    empty.mkdir()
    with pytest.raises(MediaError, match="empty clip: the frame folder holds no frame images"):
        reader.frame_count(empty)
    (empty / "0000.webp").write_bytes(b"x")
    with pytest.raises(MediaError, match=r"empty clip: the frame folder holds no frame images .*'0000.webp'"):
        reader.read(empty, [0])
    with pytest.raises(MediaError, match="missing clip: no such frame folder"):
        reader.frame_count(tmp_path / "missing clip")


def test_frame_folders_read_grey_and_16_bit_frames_as_rgb(tmp_path):
    folder = tmp_path / "grey"
    folder.mkdir()
    Image.fromarray(np.full((4, 6), 0x1234, np.uint16)).save(folder / "0000.png")
    Image.fromarray(np.full((4, 6), 0x56, np.uint8)).save(folder / "0001.png")
    frames = get_reader("frames").read(folder, [0, 1])
    np.testing.assert_array_equal(frames[:, 0, 0], [[0x12] * 3, [0x56] * 3])


# -- sample_indices -------------------------------------------------------------------------------

@pytest.mark.parametrize("fps", [0, -2.0, float("nan"), None])
def test_fps_sampling_names_a_bad_fps(fps):
    with pytest.raises(ValueError, match=rf"sampling 'fps' needs fps > 0, got fps={fps}"):
        sample_indices(64, 4, "fps", video_fps=8, fps=fps)
    with pytest.raises(ValueError, match=rf"needs fps > 0, got fps={fps}"):
        sample_indices(2, 4, "fps", video_fps=8, fps=fps)  # a short video is no way around it


@pytest.mark.parametrize("video_fps", [0, float("nan"), None])
def test_fps_sampling_names_a_video_without_a_frame_rate(video_fps):
    with pytest.raises(ValueError, match=rf"video's frame rate > 0, got video_fps={video_fps}"):
        sample_indices(64, 4, "fps", video_fps=video_fps, fps=1)


@pytest.mark.parametrize("num", [0, -1])
def test_sampling_needs_one_frame_at_least(num):
    with pytest.raises(ValueError, match=f"num frames must be >= 1, got {num}"):
        sample_indices(64, num)
