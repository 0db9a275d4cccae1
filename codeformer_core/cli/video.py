"""One video file through the pipeline, chunk by chunk: decode, restore, quantize band by band,
encode. Memory stays flat whatever the length; each frame keeps its timestamp."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import List, Optional

from ..errors import NotEnoughMemoryError
from .console import UserError, progress_bar
from .engine import BoxRecorder, Session, chunk_frames_for, memory_error, restore_frames
from .images import draw_saved_boxes


class EncoderFrames:
    """The sink of one video chunk: uint8 frames [n,H,W,3] for the encoder, filled band by band."""

    def __init__(self, n: int, height: int, width: int):
        import numpy as np
        self.array = np.empty((n, height, width, 3), np.uint8)

    def __call__(self, first, row0, rgb, _mask) -> None:
        self.array[first:first + rgb.shape[0], row0:row0 + rgb.shape[1]] = (rgb.numpy() * 255 + 0.5).astype("uint8")


@dataclass
class VideoTally:
    """What one video's chunks added up to: frames written, faces per frame, and how long the
    shortest and longest frame was shown (a variable frame rate is reported as such)."""
    face_counts: List[int] = field(default_factory=list)
    shortest: float = float("inf")
    longest: float = 0.0

    @property
    def frames(self) -> int:
        return len(self.face_counts)

    @property
    def faces(self) -> int:
        return int(sum(self.face_counts))

    @property
    def no_face(self) -> int:
        return sum(1 for c in self.face_counts if c == 0)

    def timing(self, chunk) -> None:
        shown = [e - t for t, e in zip(chunk.times, chunk.ends)]
        self.shortest, self.longest = min([self.shortest] + shown), max([self.longest] + shown)


@dataclass(frozen=True)
class VideoJob:
    """One video's fixed facts: output size and rate, frames per chunk, the smoothing in use."""
    src: Path
    info: object                     # io.video.VideoInfo
    fps_out: Fraction
    width: int                       # output size before the encoder's even-size crop
    height: int
    frames_per_chunk: int
    smoother: object = None          # one-pass smoothing (--smooth-online)
    temporal: float = 0.0            # --temporal (sigma in frames)
    found: object = None             # every frame's faces from the first pass (--smooth, --temporal)
    codes: object = None             # pipeline.TrackCodes from the logits pass (--temporal)


def detect_video(session: Session, src: Path, frames: int):
    """First pass of zero-lag smoothing (--smooth): every frame's faces, smoothed along each face's
    track. Only the detections are kept, so memory stays flat whatever the length."""
    from ..io.video import VideoReader
    from ..pipeline import detect_clip
    s, detector = session.settings, session.nets.detector
    detector = detector.detector if isinstance(detector, BoxRecorder) else detector
    bar = progress_bar(total=frames, desc=f"{src.name} detect", unit="frame", quiet=session.out.quiet, leave=False)
    try:
        with VideoReader(src) as reader:
            return detect_clip(reader.chunks(s.frames_per_chunk), detector, s.video.smooth,
                               progress=lambda done, total: _show(bar, done, total), total=frames,
                               **s.detect.options().kwargs())
    finally:
        bar.close()


def video_codes(session: Session, src: Path, found, frames: int):
    """The logits pass of --temporal: every tracked face encoded once more and its codes chosen
    along its track; only the codes are kept (512 bytes a face)."""
    from ..io.video import VideoReader
    from ..pipeline import clip_codes
    s = session.settings
    bar = progress_bar(total=frames, desc=f"{src.name} codes", unit="frame", quiet=session.out.quiet, leave=False)
    try:
        with VideoReader(src) as reader:
            def chunks():
                for chunk in reader.chunks(s.frames_per_chunk):
                    yield chunk
                    bar.update(len(chunk))
            return clip_codes(chunks(), session.nets.model, found, s.video.temporal, batch_size=s.batch_size)
    finally:
        bar.close()


def _show(bar, done: int, total: int) -> None:
    bar.total, bar.n = total, done
    bar.refresh()


def plan_video(session: Session, src: Path, info) -> VideoJob:
    """The output size and rate, the chunk size and the smoothing of one video."""
    from ..faces.tracks import LandmarkSmoother
    s = session.settings
    mask = session.nets.mask
    if mask is not None and mask.shape != (info.height, info.width):
        raise UserError(f"mask is {mask.shape[1]}x{mask.shape[0]}, video is {info.width}x{info.height}")
    smoother = found = codes = None
    if s.video.smooth_online > 0 and not s.has_aligned:
        smoother = LandmarkSmoother(strength=s.video.smooth_online)
    elif (s.video.smooth > 0 or s.video.temporal > 0) and not s.has_aligned:
        found = detect_video(session, src, info.frames)
        if s.video.temporal > 0 and len(found):
            codes = video_codes(session, src, found, info.frames)
    return VideoJob(src=src, info=info,
                    fps_out=Fraction(s.video.fps).limit_denominator(100000) if s.video.fps else info.fps,
                    temporal=s.video.temporal, width=int(info.width * s.upscale), height=int(info.height * s.upscale),
                    frames_per_chunk=chunk_frames_for(s, info.height, info.width), smoother=smoother, found=found,
                    codes=codes)


def restore_chunk(session: Session, job: VideoJob, chunk, first: int, writer, tally: VideoTally) -> None:
    """One decoded chunk (frames ``first``...): the frames --fps keeps, restored and encoded."""
    from ..io.video import frame_repeats
    fps = session.settings.video.fps
    n = len(chunk)
    tally.timing(chunk)
    counts = frame_repeats(chunk.times, chunk.ends, job.fps_out) if fps else [1] * n
    keep = [i for i, c in enumerate(counts) if c > 0]
    if not keep:
        return
    out = EncoderFrames(len(keep), job.height, job.width)
    frames = [first + i for i in keep]
    try:
        res, boxes = restore_frames(session, chunk.frames[keep] if len(keep) < n else chunk.frames,
                                    smoother=job.smoother, sink=out,
                                    detections=None if job.found is None else
                                    job.found.take_frames(frames),
                                    codes=None if job.codes is None else job.codes.take_frames(frames))
    except NotEnoughMemoryError as e:
        raise memory_error(e, job.src, f"frame {first + keep[e.item] + 1} ({job.info.width}x{job.info.height}"
                                       f" pixels, output {job.width}x{job.height})") from e
    for k, b in enumerate(boxes or []):
        draw_saved_boxes(out.array[k], b, session.settings.upscale)
    if fps:
        writer.write(out.array, [counts[i] for i in keep])
    else:
        writer.write(out.array, times=chunk.times, ends=chunk.ends)
    tally.face_counts.extend(res.face_counts)


def process_video(session: Session, src: Path, dest: Path):
    """Restore one video into ``dest``; returns (result line, faces per written frame).

    Without --fps each frame keeps its input timestamp (a variable frame rate stays variable,
    audio stays in sync); with --fps frames are dropped or repeated by timestamp. Rotation
    metadata is applied (upright frames, upright output). A video that stops decoding early is
    processed as far as it decodes, with a warning."""
    from ..io.video import VideoReader, VideoWriter
    s, out = session.settings, session.out
    t0 = time.perf_counter()
    tally = VideoTally()
    with VideoReader(src) as reader:
        job = plan_video(session, src, reader.info)
        with VideoWriter(dest, job.width, job.height, job.fps_out,
                         audio_from=src if job.info.has_audio else None, codec=s.video.codec, crf=s.video.crf,
                         time_base=None if s.video.fps else reader.stream.time_base) as writer:
            if (job.width, job.height) != (writer.width, writer.height):
                out.info(f"{src.name}: output {job.width}x{job.height} cropped to {writer.width}x{writer.height} "
                         f"(the encoder needs even sizes)")
            encode_all(session, job, reader, writer, tally)
            if reader.shortfall:
                out.warn(f"{src.name}: {reader.shortfall}; the output has the {tally.frames} frames that decoded")
            writer.finish()
    return video_line(s.video.fps, job, writer, tally, dest, time.perf_counter() - t0), tally.face_counts


def encode_all(session: Session, job: VideoJob, reader, writer, tally: VideoTally) -> None:
    """Every chunk of the video, with a frames bar."""
    bar = progress_bar(total=job.info.frames, desc=job.src.name, unit="frame", quiet=session.out.quiet,
                       leave=False)
    try:
        first = 0
        for chunk in reader.timed_chunks(job.frames_per_chunk):
            bar.update(len(chunk))
            restore_chunk(session, job, chunk, first, writer, tally)
            first += len(chunk)
            bar.set_postfix(faces=tally.faces, refresh=False)
    finally:
        bar.close()


def video_line(fps: Optional[float], job: VideoJob, writer, tally: VideoTally, dest: Path, seconds: float) -> str:
    """The result line of one video: frames, timing, faces, audio, speed."""
    info = job.info
    audio = ("audio copied" if writer.audio_copied else "audio not copied") if info.has_audio else "no audio"
    if writer.audio_note:
        audio += f" ({writer.audio_note})"
    if fps:
        timing = f"{writer.frames_written} written at {float(job.fps_out):.3g} fps"
    elif tally.longest > 1.05 * tally.shortest:
        timing = f"variable frame rate kept: {tally.shortest * 1000:.0f} to {tally.longest * 1000:.0f} ms a frame"
    else:
        timing = f"{float(info.fps):.3g} fps"
    if info.rotation:   # frames turned upright; the output is stored upright, without the tag
        timing += f"; rotation metadata {info.rotation}\u00b0 applied"
    faces = tally.faces
    filled = ""
    if job.found is not None and job.found.interpolated is not None:
        filled = f", {int(job.found.interpolated.sum())} missed faces filled in"
    temporal = f", temporal codes over {job.temporal:g} frames" if job.codes is not None else ""
    return (f"{job.src.name} -> {dest}: {tally.frames} frames ({timing}), {faces} faces, {tally.no_face} "
            f"frames with no face{filled}{temporal}, {audio}, {seconds:.1f} s, "
            f"{faces / seconds if seconds > 0 else 0:.2f} faces/s")
