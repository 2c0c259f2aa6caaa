"""Dense optical flow between consecutive frames (OpenCV DIS or Farneback), a derived input.

DIS (Kroeger et al., ECCV 2016) is OpenCV's fast dense flow: at its ``medium`` preset it runs at hundreds of
frames/s on 240x360 frames on one core, which is what makes motion usable in a real-time CPU pipeline.
Farneback (2003) is offered as the classic alternative.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from oddframe.data.loading import TransformedFrame

METHODS = ("dis", "farneback")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def to_grey_uint8(data: np.ndarray) -> np.ndarray:
    """A model input ``(C, H, W)`` in ``[-1, 1]`` as an ``(H, W)`` uint8 grey image (channel mean)."""
    grey = (data[0] if len(data) == 1 else data.mean(axis=0)) if data.ndim == 3 else data
    return np.clip((grey + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


class OpticalFlow:
    """Flow from the frame ``step`` frames earlier to this one: ``(2, H, W)`` float32 (dx, dy) in pixels per frame.

    The first ``step`` frames of a video have no predecessor: called on them it returns zeros, and
    :func:`oddframe.features.with_features` gives them the first measured flow instead. Pixels the frame marks invalid
    get zero flow.

    Args:
        method: ``"dis"`` (default) or ``"farneback"``.
        preset: DIS preset, ``"ultrafast" | "fast" | "medium"``.
        scale: compute the flow on the frame resized by this factor (<= 1) and bring it back, for speed.
        step: frames between the two images of each flow (the result is divided by ``step``).
        refine: DIS variational refinement iterations per pyramid level (None: the preset's, 5 for ``fast`` and
            ``medium``); the refinement smooths the patch flow and is about half of ``medium``'s time.
    """

    channels = 2

    def __init__(
        self, *, method: str = "dis", preset: str = "medium", scale: float = 1.0, step: int = 1, refine: int | None = None
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"flow method must be one of {', '.join(METHODS)}; got {method!r}")
        if preset not in DIS_PRESETS:
            raise ValueError(f"flow preset must be one of {', '.join(DIS_PRESETS)}; got {preset!r}")
        if not 0 < scale <= 1:
            raise ValueError(f"flow scale must be in (0, 1], got {scale}")
        if step < 1:
            raise ValueError(f"flow step must be >= 1, got {step}")
        if refine is not None and refine < 0:
            raise ValueError(f"flow refine (variational refinement iterations) must be >= 0, got {refine}")
        self.method, self.preset, self.scale, self.step = method, preset, scale, step
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset]) if method == "dis" else None
        if self._dis is not None and refine is not None:
            self._dis.setVariationalRefinementIterations(int(refine))
        self._previous: deque[np.ndarray] = deque(maxlen=step)
        self.lead = step  # opening frames without a predecessor (see features.with_features)

    def reset(self) -> None:
        self._previous.clear()

    def _flow(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        if self._dis is not None:
            return self._dis.calc(before, after, None)
        return cv2.calcOpticalFlowFarneback(before, after, None, 0.5, 3, 15, 3, 5, 1.2, 0)

    def __call__(self, frame: TransformedFrame) -> np.ndarray:
        grey = to_grey_uint8(frame.data)
        h, w = grey.shape
        small = grey
        if self.scale < 1:
            size = (max(8, round(w * self.scale)), max(8, round(h * self.scale)))
            small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        if len(self._previous) < self.step:
            self._previous.append(small)
            return np.zeros((2, h, w), np.float32)
        flow = self._flow(self._previous[0], small)  # (h', w', 2)
        self._previous.append(small)
        if self.scale < 1:
            sy, sx = h / small.shape[0], w / small.shape[1]
            flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR) * np.array([sx, sy], np.float32)
        out = np.ascontiguousarray(np.moveaxis(flow, -1, 0), dtype=np.float32) / self.step
        out[:, ~frame.valid] = 0.0
        return out
