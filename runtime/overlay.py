"""Drawing predictions on frames, and the --display window (only where a display exists)."""

from __future__ import annotations

import os
import re
import sys

import cv2
import numpy as np


def draw_overlay(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """A copy of a BGR frame with `lines` of text in a dark box at its top-left corner."""
    canvas = image.copy()
    scale = max(0.4, min(canvas.shape[:2]) / 600)
    thickness = max(1, round(scale * 2))
    line_h = int(22 * scale) + 6
    width = max((cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for t in lines), default=0)
    cv2.rectangle(canvas, (0, 0), (width + 12, line_h * len(lines) + 6), (0, 0, 0), -1)
    for i, text in enumerate(lines):
        cv2.putText(canvas, text, (6, line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
    return canvas


def overlay_lines(label: str | None, score: float, fps: float | None = None,
                  top_k: list[tuple[str, float]] | None = None) -> list[str]:
    lines = [f"{label if label is not None else '(unsure)'} {score:.0%}"]
    for other, other_score in (top_k or [])[1:]:
        lines.append(f"{other} {other_score:.0%}")
    if fps:
        lines.append(f"{fps:.1f} fps")
    return lines


class DisplayError(RuntimeError):
    """--display was asked for where no window can be shown; the message says why and what to use instead."""


def display_problem() -> str | None:
    """Why no window can be shown here, or None when one can."""
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui and gui.group(1).upper() == "NONE":
        return ("this OpenCV has no GUI support (opencv-python-headless): install opencv-python, or use "
                "--preview-port for a browser preview instead")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display: DISPLAY and WAYLAND_DISPLAY are not set (headless device? use --preview-port)"
    return None


class DisplayWindow:
    """An OpenCV window showing each frame with its prediction. Created only where a display exists."""

    def __init__(self, title: str = "edgevision"):
        problem = display_problem()
        if problem:
            raise DisplayError(f"--display cannot open a window: {problem}")
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def show(self, image: np.ndarray, lines: list[str]) -> bool:
        """Show a frame; False when the user asked to quit (q or Esc) or closed the window."""
        cv2.imshow(self.title, draw_overlay(image, lines))
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            return False
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        cv2.destroyWindow(self.title)
