"""Change detection between frames, derived inputs: the frame difference and an OpenCV background model.

Both say *where something changed*, the cue that turns dense optical flow into objects without a detector:
flow is defined everywhere (and noisy on flat or flickering areas), while a moving object also changes the
image. The frame difference is what AI-VAD's own detector-free fallback uses (Reiss & Hoshen 2023, after
HF2-VAD: Gaussian blur, absolute difference of consecutive frames, a threshold of 18 grey levels, contours).
A background model (MOG2, Zivkovic 2004; KNN, Zivkovic & van der Heijden 2006) also finds objects that stop
for a while, at the price of a warm-up at the start of every video.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from oddframe.data.loading import TransformedFrame
from oddframe.features.flow import to_grey_uint8

BACKGROUND_METHODS = ("mog2", "knn")


class FrameDifference:
    """``|blur(frame_t) - blur(frame_{t-step})|`` of the grey frame, ``(1, H, W)`` float32 in grey levels (0-255).

    The first ``step`` frames of a video have no predecessor: called on them it returns zeros, and
    :func:`oddframe.features.with_features` gives them the first measured difference instead. Invalid pixels get zero.

    Args:
        blur: side of the Gaussian kernel applied to both frames first (odd; 1 = none), against sensor noise.
        step: frames between the two images.
    """

    channels = 1

    def __init__(self, *, blur: int = 3, step: int = 1) -> None:
        if blur < 1 or blur % 2 == 0:
            raise ValueError(f"frame difference blur must be an odd kernel size >= 1, got {blur}")
        if step < 1:
            raise ValueError(f"frame difference step must be >= 1, got {step}")
        self.blur, self.step = blur, step
        self._previous: deque[np.ndarray] = deque(maxlen=step)
        self.lead = step  # opening frames without a predecessor (see features.with_features)

    def reset(self) -> None:
        self._previous.clear()

    def __call__(self, frame: TransformedFrame) -> np.ndarray:
        grey = to_grey_uint8(frame.data)
        if self.blur > 1:
            grey = cv2.GaussianBlur(grey, (self.blur, self.blur), 0)
        if len(self._previous) < self.step:
            self._previous.append(grey)
            return np.zeros((1, *grey.shape), np.float32)
        diff = cv2.absdiff(grey, self._previous[0]).astype(np.float32)
        self._previous.append(grey)
        diff[~frame.valid] = 0.0
        return diff[None]


class BackgroundModel:
    """Foreground mask of an OpenCV background subtractor, ``(1, H, W)`` float32: 1 = foreground, 0 = background.

    The model learns each video's background from its own frames (it is reset per video), so the first frames of
    a video are unreliable: for ``warmup`` frames the mask is empty.

    Args:
        method: ``"mog2"`` (Gaussian mixture per pixel) or ``"knn"``.
        history: frames that shape the background.
        threshold: MOG2's ``varThreshold`` (squared Mahalanobis distance) or KNN's ``dist2Threshold``; None =
            OpenCV's default (16 for MOG2, 400 for KNN).
        warmup: frames at the start of a video whose mask is empty (the model has not seen the background yet).
    """

    channels = 1

    def __init__(
        self, *, method: str = "mog2", history: int = 200, threshold: float | None = None, warmup: int = 10
    ) -> None:
        if method not in BACKGROUND_METHODS:
            raise ValueError(f"background method must be one of {', '.join(BACKGROUND_METHODS)}; got {method!r}")
        if history < 1 or warmup < 0:
            raise ValueError(f"background history must be >= 1 and warmup >= 0, got {history} and {warmup}")
        self.method, self.history, self.threshold, self.warmup = method, history, threshold, warmup
        self.reset()

    def reset(self) -> None:
        if self.method == "mog2":
            kw = {} if self.threshold is None else {"varThreshold": self.threshold}
            self._model = cv2.createBackgroundSubtractorMOG2(history=self.history, detectShadows=False, **kw)
        else:
            kw = {} if self.threshold is None else {"dist2Threshold": self.threshold}
            self._model = cv2.createBackgroundSubtractorKNN(history=self.history, detectShadows=False, **kw)
        self._seen = 0

    def __call__(self, frame: TransformedFrame) -> np.ndarray:
        grey = to_grey_uint8(frame.data)
        mask = self._model.apply(grey)  # 255 foreground, 0 background
        self._seen += 1
        out = (mask > 127).astype(np.float32)
        if self._seen <= self.warmup:
            out[:] = 0.0
        out[~frame.valid] = 0.0
        return out[None]
