"""Temporal code consistency: codebook choices that do not flicker along a face track.

CodeFormer picks, for each of the 256 tokens of a face, the codebook entry with the highest
Transformer logit. In a video each frame picks on its own, so a token whose two best codes are
close flips between frames and a 32x32 patch of the restored face changes although the input
barely moved. Here the code choice of a frame uses its neighbours on the same face track:

1. Scores. Per track and token, the log-probabilities (``log_softmax`` of the logits) are
   averaged over a centred Gaussian window of ``sigma`` frames (radius ``ceil(3 sigma)``), with
   only the frames where that track has a face (truncated at the track's ends, at frames where
   the face is missing and so at scene cuts, which end tracks: ``faces.tracks``). Zero lag: the
   window is symmetric wherever the track is present on both sides.
2. Sticky decision. A plain argmax of the averaged scores still flips where two codes stay
   close. Along the track each token takes the sequence of codes that maximises the sum of its
   scores minus ``switch_cost`` for every change of code (a Viterbi path; switching to any code
   costs the same, so one step is O(codebook)). The decision is symmetric in time (the best path
   over the window, not "keep the old code until the new one wins by a margin", which would delay
   every change): where the content really changes, the switch falls where the scores cross.
3. Streaming. ``TemporalCodes`` takes the logits of consecutive chunks of frames and gives back
   the codes of a frame once ``lookahead = radius + lag`` later frames have been seen (the
   Gaussian needs ``radius`` frames of future, the sticky path looks ``lag`` frames further,
   default ``lag = radius``); ``finish()`` gives the rest. Memory per live track: the
   log-probabilities of ``2 radius + 1`` frames and the averaged scores of ``lag + 1`` pending
   frames, each 256 x codebook float32 (1 MiB a frame for 1024 codes): ~20 MiB a track at
   sigma 2, whatever the clip's length. The result does not depend on how the clip is chunked
   (the frame clock advances one frame at a time inside).

``sigma = 0`` is today's behaviour exactly: ``logits.argmax(-1)``, bit for bit. The fusion
features (w > 0) are left per frame: docs/temporal.md has the measurement, and the limit found:
content that moves inside the crop by less than a code patch keeps its codes (the restored
texture then follows the input only through the fusion features).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["DEFAULT_TEMPORAL", "DEFAULT_SWITCH_COST", "TemporalCodes", "temporal_codes", "window_radius",
           "sticky_path"]

DEFAULT_TEMPORAL = 2.0        # sigma in frames, as the CLI's --smooth
DEFAULT_SWITCH_COST = 1.0     # nats per change of code (measured: docs/temporal.md)
KEEP_AFTER_TRACK = 8          # frames a silent track's last codes are kept (tracks' gaps are shorter)


def window_radius(sigma: float) -> int:
    """Frames on each side of the centred Gaussian window (0 when ``sigma`` is 0)."""
    return max(1, math.ceil(3 * sigma)) if sigma > 0 else 0


def sticky_path(scores: Tensor, switch_cost: float, start: Optional[Tensor] = None) -> Tensor:
    """[T,N] codes maximising, per token, sum_t scores[t, n, code_t] - switch_cost * (changes).

    ``scores`` [T,N,K]; ``start`` [N]: the code chosen just before (a change from it also
    costs), or None. Ties keep the current code. O(T N K) time, T N K bools of back-pointers."""
    t_len = scores.shape[0]
    cost = torch.as_tensor(switch_cost, dtype=scores.dtype, device=scores.device)
    score = scores[0].clone()
    if start is not None:
        score -= cost
        score.scatter_add_(1, start[:, None], cost.expand(start.shape[0], 1))
    stays, prev_best = [], []
    for t in range(1, t_len):
        best, arg = score.max(-1)
        switch = (best - cost)[:, None]
        stay = score >= switch
        score = torch.where(stay, score, switch) + scores[t]
        stays.append(stay)
        prev_best.append(arg)
    path = torch.empty(scores.shape[:2], dtype=torch.int64, device=scores.device)
    k = score.argmax(-1)
    path[-1] = k
    for t in range(t_len - 1, 0, -1):
        kept = stays[t - 1].gather(1, k[:, None]).squeeze(1)
        k = torch.where(kept, k, prev_best[t - 1])
        path[t - 1] = k
    return path


@dataclass
class _Track:
    logp: Dict[int, Tensor] = field(default_factory=dict)     # frame -> [N,K] log-probabilities
    fused: Dict[int, Tensor] = field(default_factory=dict)    # frame -> [N,K] window average, not yet decided
    last_code: Optional[Tensor] = None                        # [N] the last decided frame's codes
    last_frame: int = -1                                      # the last frame pushed for this track


class TemporalCodes:
    """Streaming temporal code choice for the faces of one clip (see the module notes).

    ``push(logits, frame_index, track, upto)`` with frames in order (each call's frames after the
    previous call's ``upto``); it returns ``(frame_index, track, codes)`` of the faces whose
    codes are now decided, in any order: match them to the faces by (frame, track). ``finish()``
    returns the rest. ``frame_index`` are clip frame numbers; ``track`` ids as given by
    ``faces.tracks.track_detections`` (a track never spans a scene cut).
    """

    def __init__(self, sigma: float = DEFAULT_TEMPORAL, switch_cost: float = DEFAULT_SWITCH_COST,
                 lag: Optional[int] = None):
        if not sigma >= 0 or not switch_cost >= 0:
            raise ValueError(f"temporal sigma and switch cost must be >= 0, got {sigma} and {switch_cost}")
        self.sigma, self.switch_cost = float(sigma), float(switch_cost)
        self.radius = window_radius(self.sigma)
        self.lag = (self.radius if lag is None else int(lag)) if self.sigma > 0 else 0
        self.lookahead = self.radius + self.lag
        offsets = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
        self._weights = torch.exp(-offsets ** 2 / (2 * max(self.sigma, 1e-9) ** 2)).tolist()
        self._tracks: Dict[int, _Track] = {}
        self._clock = -1          # every frame up to here has been pushed
        self._ready: List[Tuple[int, int, Tensor]] = []

    # -- public -----------------------------------------------------------------------------
    def push(self, logits: Tensor, frame_index: Tensor, track: Tensor,
             upto: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Faces [B] of frames ``<= upto`` (default: their last frame); returns decided faces."""
        frames, tracks = frame_index.cpu().tolist(), track.cpu().tolist()
        upto = max(frames, default=self._clock) if upto is None else int(upto)
        if frames and (min(frames) <= self._clock or max(frames) > upto):
            raise ValueError(f"TemporalCodes.push: frames {min(frames)}..{max(frames)} are not after the frames "
                             f"already pushed (up to {self._clock}) and up to {upto}; push frames in order")
        if self.sigma == 0:       # today's choice, bit for bit
            self._clock = max(self._clock, upto)
            return torch.tensor(frames, dtype=torch.int64), torch.tensor(tracks, dtype=torch.int64), \
                logits.argmax(-1)
        logp = torch.log_softmax(logits.float(), dim=-1)
        for i, (f, t) in enumerate(zip(frames, tracks)):
            st = self._tracks.setdefault(t, _Track())
            if f in st.logp or f in st.fused:
                raise ValueError(f"TemporalCodes.push: two faces of track {t} in frame {f}")
            st.logp[f] = logp[i]
            st.last_frame = f
        for clock in range(self._clock + 1, upto + 1):
            self._clock = clock
            self._advance(clock - self.radius, clock - self.lookahead)
        return self._take_ready()

    def finish(self) -> Tuple[Tensor, Tensor, Tensor]:
        """Decide every face still pending (the clip has ended)."""
        if self.sigma > 0:
            end = self._clock + self.lookahead
            for clock in range(self._clock + 1, end + 1):
                self._advance(clock - self.radius, clock - self.lookahead)
            self._tracks.clear()
        return self._take_ready()

    # -- inside -------------------------------------------------------------------------------
    def _advance(self, fuse_frame: int, decide_frame: int) -> None:
        """Frames up to ``fuse_frame + radius`` are known: average ``fuse_frame``'s window and
        decide ``decide_frame`` (the sticky path over the pending frames up to ``fuse_frame``)."""
        for t in list(self._tracks):
            st = self._tracks[t]
            if fuse_frame in st.logp:
                acc, total = None, 0.0
                for d, w in zip(range(-self.radius, self.radius + 1), self._weights):
                    v = st.logp.get(fuse_frame + d)
                    if v is not None:
                        acc = v * w if acc is None else acc.add(v, alpha=w)
                        total += w
                st.fused[fuse_frame] = acc / total
            for f in [f for f in st.logp if f < fuse_frame + 1 - self.radius]:
                del st.logp[f]      # no later window reaches it
            if decide_frame in st.fused:
                pending = sorted(st.fused)
                path = sticky_path(torch.stack([st.fused[f] for f in pending]), self.switch_cost, st.last_code)
                code = path[pending.index(decide_frame)]
                self._ready.append((decide_frame, t, code))
                st.last_code = code
                del st.fused[decide_frame]
            if not st.logp and not st.fused and st.last_frame < decide_frame - self.lookahead - KEEP_AFTER_TRACK:
                del self._tracks[t]         # long gone (a track's gaps are shorter): only its last codes were left

    def _take_ready(self) -> Tuple[Tensor, Tensor, Tensor]:
        ready, self._ready = self._ready, []
        if not ready:
            none = torch.zeros(0, dtype=torch.int64)
            return none, none.clone(), torch.zeros(0, 0, dtype=torch.int64)
        return (torch.tensor([r[0] for r in ready]), torch.tensor([r[1] for r in ready]),
                torch.stack([r[2] for r in ready]))


def temporal_codes(logits: Tensor, frame_index: Tensor, track: Tensor, sigma: float = DEFAULT_TEMPORAL,
                   switch_cost: float = DEFAULT_SWITCH_COST, lag: Optional[int] = None) -> Tensor:
    """[M,N] codes of every face of a clip at once (rows as given: ``logits`` [M,N,K], frame
    numbers and track ids [M]); the same codes as ``TemporalCodes`` fed in any chunks."""
    fuser = TemporalCodes(sigma, switch_cost, lag)
    order = torch.sort(frame_index.cpu(), stable=True).indices
    parts = [fuser.push(logits[order.to(logits.device)], frame_index.cpu()[order], track.cpu()[order]),
             fuser.finish()]
    codes = torch.empty(logits.shape[:2], dtype=torch.int64, device=logits.device)
    row = {(int(f), int(t)): i for i, (f, t) in enumerate(zip(frame_index.tolist(), track.tolist()))}
    for frames, tracks, c in parts:
        if len(frames):
            idx = torch.tensor([row[(int(f), int(t))] for f, t in zip(frames.tolist(), tracks.tolist())])
            codes[idx.to(codes.device)] = c.to(codes.device)
    return codes
