"""Streaming video decode / encode with PyAV, for the command line.

Why streaming: a minute of 1080p video is ~11 GB of float frames, so frames are decoded,
restored and encoded chunk by chunk and nothing holds the whole video. The audio track is
remuxed (packets copied, no re-encoding, so no quality loss) and interleaved with the video
as it is written. The output is written to a hidden temp file next to the destination and
renamed at the very end, so an interrupted or failed run never leaves a file that looks
complete.

Timing: each decoded frame carries its timestamp, and the writer gives each output frame its
input's timestamp, so a variable-frame-rate video (phones) keeps its timing and its audio sync;
with a fixed output rate, frames are dropped or repeated by timestamp (``frame_repeats``).
Rotation metadata (a phone held upright) is applied to the decoded frames, so faces are upright
for the detector and the output plays the same without it. A video that stops decoding early
(truncated, damaged) is read as far as it decodes; ``VideoReader.shortfall`` says what is missing.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
from ..errors import VideoError

__all__ = ["VIDEO_EXTS", "VideoError", "VideoInfo", "VideoChunk", "probe", "VideoReader", "VideoWriter",
           "frame_repeats", "retime_counts", "temp_path_for"]

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
# Container format per extension (the temp file has no meaningful extension).
_FORMATS = {".mp4": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska", ".webm": "webm"}
# Audio codecs each container takes as-is; others are re-encoded (see VideoWriter).
_AUDIO_OK = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"},
    "mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"},
    "avi": {"mp3", "ac3", "aac", "pcm_s16le", "pcm_u8", "pcm_s24le"},
    "matroska": None,  # takes (nearly) everything
    "webm": {"opus", "vorbis"},
}
_AUDIO_FALLBACK = {"mp4": "aac", "mov": "aac", "avi": "mp3", "matroska": "aac", "webm": "libopus"}


def _av():
    try:
        import av  # noqa: F401
    except ImportError:
        raise VideoError("video needs PyAV: pip install av (or the pack's [video] extra)") from None
    return av


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


@dataclass
class VideoInfo:
    width: int                   # as displayed: after the rotation is applied
    height: int
    fps: Fraction                # average rate (a variable-rate video keeps its own timing)
    frames: Optional[int]        # container's count or an estimate from the duration; None if unknown
    has_audio: bool
    codec: str
    audio_codec: Optional[str] = None
    rotation: int = 0            # degrees clockwise the stored frames are turned for display (0, 90, 180, 270)
    duration: Optional[float] = None  # seconds, from the container; None if unknown


@dataclass
class VideoChunk:
    """Decoded frames with their timing, in seconds from the video's start."""
    frames: np.ndarray           # [n,H,W,3] uint8 RGB, upright
    times: List[float]           # when each frame is shown
    ends: List[float]            # when each is replaced: the next frame's time (the last: + its duration)

    def __len__(self) -> int:
        return len(self.times)


def _rate(stream) -> Fraction:
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        r = getattr(stream, attr, None)
        if r:
            return Fraction(r).limit_denominator(100000)
    return Fraction(25)


def probe(path: Union[str, os.PathLike]) -> VideoInfo:
    """Size, frame rate, frame count and audio presence; raises VideoError for unreadable files."""
    with VideoReader(path) as r:
        return r.info


class VideoReader:
    """Decodes the first video stream as upright RGB uint8 chunks with their timestamps.

    Opening decodes the first frame (a file that opens but does not decode fails here, before
    any work), which also tells the rotation. Decoding that stops early, by an error or a file
    cut short, ends the chunks there: ``shortfall`` then says so (None for a complete video).
    """

    def __init__(self, path: Union[str, os.PathLike]):
        av = _av()
        self.path = Path(path)
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise VideoError(f"{self.path.name}: empty file (0 bytes)")
        try:
            self.container = av.open(str(self.path), "r")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise VideoError(f"{self.path.name}: cannot open video ({_one_line(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{self.path.name}: no video stream in the file")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        audio = self.container.streams.audio
        fps = _rate(self.stream)
        duration = None
        if self.stream.duration and self.stream.time_base:
            duration = float(self.stream.duration * self.stream.time_base)
        elif self.container.duration:
            duration = self.container.duration / 1_000_000
        frames = int(self.stream.frames or 0) or (int(round(duration * fps)) if duration else None)
        ctx = self.stream.codec_context
        if not ctx.width or not ctx.height:
            self.container.close()
            raise VideoError(f"{self.path.name}: video stream has no frame size (damaged file?)")
        tb, st = self.stream.time_base, self.stream.start_time
        self._start = float(st * tb) if st is not None and tb else None
        self.decoded = 0
        self.error: Optional[str] = None
        self._last_end: Optional[float] = None
        self._decoder = self.container.decode(self.stream)
        self._next = self._decode_one()
        if self._next is None:
            self.container.close()
            why = f" ({self.error})" if self.error else " (damaged file?)"
            raise VideoError(f"{self.path.name}: no decodable video frames{why}")
        rotation = int(round(-(self._next.rotation or 0))) % 360 if hasattr(self._next, "rotation") else 0
        width, height = (ctx.height, ctx.width) if rotation in (90, 270) else (ctx.width, ctx.height)
        self.info = VideoInfo(width, height, fps, frames, bool(audio), ctx.name,
                              audio[0].codec_context.name if audio else None, rotation, duration)

    def _decode_one(self):
        """The next decoded frame, or None at the end (also when decoding fails: ``error``)."""
        av = _av()
        try:
            return next(self._decoder)
        except StopIteration:
            return None
        except av.FFmpegError as e:
            self.error = _one_line(e)
            return None

    def _time(self, frame) -> Optional[float]:
        if frame.pts is None or not frame.time_base:
            return None
        t = float(frame.pts * frame.time_base)
        if self._start is None:
            self._start = t
        return t - self._start

    def timed_chunks(self, size: int) -> Iterator[VideoChunk]:
        """Yield ``size`` frames at a time (the last chunk may be shorter), upright, with their
        times; one frame is decoded ahead so that each frame's end is known."""
        step = 1.0 / float(self.info.fps)
        buf: List[np.ndarray] = []
        times: List[float] = []
        while self._next is not None:
            frame, self._next = self._next, self._decode_one()
            self.decoded += 1
            t = self._time(frame)
            t = (times[-1] + step if times else 0.0) if t is None else t
            if times and t <= times[-1]:      # a repeated or missing timestamp: keep the order
                t = times[-1] + step / 1000
            buf.append(self._upright(frame.to_ndarray(format="rgb24")))
            times.append(t)
            nxt = None if self._next is None else self._time(self._next)
            if nxt is None or nxt <= t:
                dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else step
                nxt = t + dur
            self._last_end = nxt
            if len(buf) >= size or self._next is None:
                ends = times[1:] + [nxt]
                yield VideoChunk(np.stack(buf), times, ends)
                buf, times = [], []

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Yield frames in chunks of ``size`` (the last may be shorter), upright."""
        for chunk in self.timed_chunks(size):
            yield chunk.frames

    def _upright(self, arr: np.ndarray) -> np.ndarray:
        r = self.info.rotation if hasattr(self, "info") else 0
        return arr if r == 0 else np.ascontiguousarray(np.rot90(arr, k=-(r // 90)))

    @property
    def shortfall(self) -> Optional[str]:
        """After reading: why the video ended before its container says it should, or None.
        ("decoding failed after 40 frames (...)", "40 of 60 frames decoded (1.6 of 2.5 s)")."""
        if self.error is not None:
            return f"decoding stopped after {self.decoded} frames ({self.error})"
        info = self.info
        short_frames = info.frames is not None and self.decoded < info.frames - 1
        short_time = (info.duration is not None and self._last_end is not None
                      and self._last_end < info.duration - 2.0 / float(info.fps))
        if not (short_frames or short_time):
            return None
        frames = f"{self.decoded} of {info.frames} frames" if info.frames else f"{self.decoded} frames"
        seconds = f" ({self._last_end:.1f} of {info.duration:.1f} s)" if info.duration and self._last_end else ""
        return f"only {frames} decoded{seconds}: the file looks truncated"

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frame_repeats(times: Sequence[float], ends: Sequence[float], fps_out: Fraction) -> List[int]:
    """How often each input frame, shown from ``times[i]`` until ``ends[i]`` (seconds), is written
    to a ``fps_out`` stream (0 = dropped): output slot k (at k / fps_out) shows the frame on screen
    at that moment, so the duration and audio sync are kept, whatever the input's timing."""
    fps = float(Fraction(fps_out))
    slot = lambda t: math.ceil(t * fps - 1e-9)  # noqa: E731  first slot at or after t
    return [max(0, slot(e) - slot(t)) for t, e in zip(times, ends)]


def retime_counts(start: int, n: int, fps_in: Fraction, fps_out: Fraction) -> List[int]:
    """``frame_repeats`` for a constant ``fps_in``: input frame i covers [i/fps_in, (i+1)/fps_in)."""
    rate = float(Fraction(fps_in))
    return frame_repeats([i / rate for i in range(start, start + n)],
                         [(i + 1) / rate for i in range(start, start + n)], fps_out)


def temp_path_for(dest: Path) -> Path:
    """Hidden sibling of ``dest`` used while writing (same folder, so rename is atomic)."""
    return dest.with_name(f".{dest.name}.part")


def _pick_codec(fmt: str, requested: Optional[str]) -> str:
    av = _av()
    candidates = [requested] if requested else (
        ["libvpx-vp9", "libvpx"] if fmt == "webm" else ["mpeg4", "libx264"] if fmt == "avi"
        else ["libx264", "h264", "mpeg4"])
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise VideoError(f"no usable video encoder among {', '.join(candidates)} in this PyAV build")


class VideoWriter:
    """Encodes RGB uint8 frames to ``dest`` (via a temp file) and copies ``audio_from``'s audio.

    Frame sizes must be even for yuv420p; odd sizes lose their last row/column (documented in
    the CLI help). ``finish()`` renames into place; ``abort()`` (or an exception inside the
    ``with`` block) deletes the temp file.
    """

    def __init__(self, dest: Union[str, os.PathLike], width: int, height: int, fps: Fraction,
                 audio_from: Union[str, os.PathLike, None] = None, codec: Optional[str] = None,
                 crf: Optional[int] = None, time_base: Optional[Fraction] = None):
        av = _av()
        self.dest = Path(dest)
        fmt = _FORMATS.get(self.dest.suffix.lower())
        if fmt is None:
            raise VideoError(f"{self.dest.name}: unsupported video extension; use one of {', '.join(VIDEO_EXTS)}")
        self.fmt = fmt
        self.tmp = temp_path_for(self.dest)
        self.width, self.height = int(width) // 2 * 2, int(height) // 2 * 2
        if self.width < 2 or self.height < 2:
            raise VideoError(f"{self.dest.name}: frame size {width}x{height} is too small to encode")
        self.fps = Fraction(fps).limit_denominator(100000)
        # Timestamps are in this unit: 1/fps for a constant rate (write(counts=...)); a finer one
        # (the input's) to keep each frame's own time (write(times=...)). MPEG-4 Part 2 takes
        # denominators up to 65535 only.
        tb = Fraction(time_base) if time_base else 1 / self.fps
        self.time_base = tb if tb.numerator == 1 and tb.denominator <= 65535 else Fraction(1, 60000)
        self.frames_written = 0
        self.clock = 0.0                 # seconds of video written so far
        self._last_pts: Optional[int] = None
        self.audio_copied = False
        self.audio_note: Optional[str] = None
        self._done = False
        self._audio_in = None
        self._audio_packets = None
        self._audio_shift = 0
        self._audio_encoder = None
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.out = av.open(str(self.tmp), "w", format=fmt)
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"{self.dest.name}: cannot create output ({_one_line(e)})") from None
        try:
            name = _pick_codec(fmt, codec)
            self.vstream = self.out.add_stream(name, rate=self.fps)
            self.vstream.width, self.vstream.height = self.width, self.height
            self.vstream.pix_fmt = "yuv420p"
            self.vstream.codec_context.time_base = self.time_base
            opts = {}
            if name == "libx264":
                opts = {"crf": str(18 if crf is None else crf), "preset": "medium"}
            elif name.startswith("libvpx"):
                opts = {"crf": str(32 if crf is None else crf), "b": "0", "deadline": "good",
                        "cpu-used": "4", "row-mt": "1"}
            else:  # mpeg4 / h264 fallbacks: a generous bit rate instead of a quality setting
                self.vstream.bit_rate = int(self.width * self.height * float(self.fps) * 0.25)
            self.vstream.options = opts
            if audio_from is not None:
                self._open_audio(Path(audio_from))
        except BaseException:
            self.abort()
            raise

    # -- audio ------------------------------------------------------------------------------
    def _open_audio(self, src: Path) -> None:
        av = _av()
        try:
            ain = av.open(str(src), "r")
        except av.FFmpegError:
            return
        if not ain.streams.audio:
            ain.close()
            return
        ast = ain.streams.audio[0]
        self._audio_in, self._astream_in = ain, ast
        ok = _AUDIO_OK[self.fmt]
        if ok is None or ast.codec_context.name in ok:
            self._astream_out = self.out.add_stream_from_template(ast)
        else:  # the container cannot hold this codec: re-encode (rare: only when -o changes container)
            enc = _AUDIO_FALLBACK[self.fmt]
            self._astream_out = self.out.add_stream(enc, rate=ast.codec_context.sample_rate or 48000)
            try:
                self._astream_out.layout = ast.codec_context.layout
            except Exception:
                pass
            self._audio_encoder = enc
            self.audio_note = f"audio re-encoded to {enc} ({ast.codec_context.name} does not fit {self.fmt})"
        vstart = self._first_video_time(src)
        if vstart and ast.time_base:
            self._audio_shift = int(round(vstart / float(ast.time_base)))
        self._audio_packets = self._audio_source()
        self._pending = None

    @staticmethod
    def _first_video_time(src: Path) -> float:
        av = _av()
        try:
            with av.open(str(src), "r") as c:
                s = c.streams.video[0]
                if s.start_time is not None and s.time_base:
                    return float(s.start_time * s.time_base)
        except Exception:
            pass
        return 0.0

    def _audio_source(self):
        """(time in seconds, packet or frame) in stream order, shifted to the video's start."""
        ast = self._astream_in
        tb = float(ast.time_base)
        if self._audio_encoder is None:
            for pkt in self._audio_in.demux(ast):
                if pkt.dts is None or pkt.size == 0:
                    continue
                # Negative times are kept: AAC priming packets legitimately start before 0.
                pkt.pts = None if pkt.pts is None else pkt.pts - self._audio_shift
                pkt.dts = pkt.dts - self._audio_shift
                yield pkt.dts * tb, pkt
        else:
            for frame in self._audio_in.decode(ast):
                t = (frame.pts - self._audio_shift) * tb if frame.pts is not None else 0.0
                frame.pts = None
                yield t, frame

    def _mux_audio_until(self, t_limit: Optional[float]) -> None:
        if self._audio_packets is None:
            return
        av = _av()
        try:
            while True:
                if self._pending is None:
                    self._pending = next(self._audio_packets)
                t, item = self._pending
                if t_limit is not None and t > t_limit:
                    return
                self._pending = None
                if self._audio_encoder is None:
                    item.stream = self._astream_out
                    self.out.mux(item)
                else:
                    for p in self._astream_out.encode(item):
                        self.out.mux(p)
                self.audio_copied = True
        except StopIteration:
            self._audio_packets = None
            if self._audio_encoder is not None:
                for p in self._astream_out.encode(None):
                    self.out.mux(p)
        except av.FFmpegError as e:
            # A damaged audio track must not cost the restored video: finish without the rest.
            self.audio_note = f"audio copy stopped early ({_one_line(e)})"
            self._audio_packets = None

    # -- video ------------------------------------------------------------------------------
    def write(self, frames: np.ndarray, counts: Optional[List[int]] = None,
              times: Optional[Sequence[float]] = None, ends: Optional[Sequence[float]] = None) -> None:
        """Encode RGB uint8 frames [n,H,W,3]. ``times`` (seconds from the start, with ``ends``, when
        each frame is replaced): each frame keeps its own time. Else each frame fills ``counts[i]``
        consecutive slots of the constant rate (1 each when None; 0 drops it)."""
        av = _av()
        frames = frames[:, :self.height, :self.width]
        if frames.shape[1] != self.height or frames.shape[2] != self.width:
            raise VideoError(f"{self.dest.name}: frame size {frames.shape[2]}x{frames.shape[1]} "
                             f"!= {self.width}x{self.height}")
        tb = self.time_base
        try:
            for i, arr in enumerate(frames):
                reps = 1 if counts is None or times is not None else int(counts[i])
                if reps <= 0:
                    continue
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                for _ in range(reps):
                    if times is not None:   # its own time, on the time base's grid, strictly increasing
                        pts = int(round(float(times[i]) / tb))
                        pts = pts if self._last_pts is None else max(self._last_pts + 1, pts)
                        self.clock = max(float(pts * tb), float(ends[i]) if ends is not None else 0.0)
                    else:               # the next slot of the constant rate
                        pts = int(round(self.frames_written / (self.fps * tb)))
                        self.clock = (self.frames_written + 1) / float(self.fps)
                    vf.pts, vf.time_base = pts, tb
                    for pkt in self.vstream.encode(vf):
                        self.out.mux(pkt)
                    self._last_pts = pts
                    self.frames_written += 1
            self._mux_audio_until(self.clock + 0.5)
        except av.FFmpegError as e:
            raise VideoError(f"{self.dest.name}: encoding failed ({_one_line(e)})") from None

    def finish(self) -> Path:
        """Flush, copy the remaining audio, close and move the temp file into place."""
        av = _av()
        if self.frames_written == 0:
            self.abort()
            raise VideoError(f"{self.dest.name}: no frames to write")
        try:
            for pkt in self.vstream.encode(None):
                self.out.mux(pkt)
            self._mux_audio_until(None)
            self.out.close()
        except av.FFmpegError as e:
            self.abort()
            raise VideoError(f"{self.dest.name}: finishing the file failed ({_one_line(e)})") from None
        self._close_audio()
        os.replace(self.tmp, self.dest)
        self._done = True
        return self.dest

    def _close_audio(self) -> None:
        if self._audio_in is not None:
            try:
                self._audio_in.close()
            except Exception:
                pass
            self._audio_in = None

    def abort(self) -> None:
        """Drop everything written so far (no partial output is left behind)."""
        if self._done:
            return
        self._done = True
        try:
            self.out.close()
        except Exception:
            pass
        self._close_audio()
        try:
            self.tmp.unlink()
        except OSError:
            pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
