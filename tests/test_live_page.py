"""The live preview page (`--preview-port`) in a real headless browser (Debian's chromium + chromedriver):
it shows the loop's own answer for the frame it names, its picture moves, and it comes back by itself
after the server goes away and a new one starts on the same port. Plus /events read without a browser,
and the benchmark of what watching costs the loop (runtime/preview_bench.py).

Set EDGEVISION_SCREENSHOT=path.png to keep a screenshot of the live page (the README's picture)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from edgevision.devices.sources import Source
from edgevision.runtime.classifier import Classifier
from edgevision.runtime.loop import LoopConfig, run_loop
from edgevision.runtime.preview import PAGE, RETRY_MS, PreviewConfig

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# skimage's bundled photos (offline), and what the page calls them.
PHOTOS = {"chelsea": "cat", "astronaut": "astronaut", "rocket": "rocket"}
HEIGHT, WIDTH, PAN = 360, 480, 60  # frames the camera delivers; how far it pans over a photo
SCENE_FRAMES = 60  # frames per photo (3 s at 20 fps)
WAIT_S = 20  # generous: a loaded 2-core machine runs the loop, the server and a browser


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {name: cv2.cvtColor(getattr(skimage.data, photo)(), cv2.COLOR_RGB2BGR) for photo, name in PHOTOS.items()}


@pytest.fixture(scope="module")
def classifier(tiny_bundle, photos, tmp_path_factory) -> Classifier:
    """The tiny classifier, each class named after the photo it is surest of (a class no photo claims keeps
    its name): the page then reads like a real one, and its screenshot makes sense."""
    folder = tmp_path_factory.mktemp("live_page") / "bundle"
    shutil.copytree(tiny_bundle.folder, folder)
    plain = Classifier(folder, threads=1)
    labels = plain.labels
    for name, photo in photos.items():
        labels[plain.classify(photo).index] = name
    data = json.loads((folder / "bundle.json").read_text())
    data["labels"] = labels
    (folder / "bundle.json").write_text(json.dumps(data, indent=2))
    return Classifier(folder, threads=1, top_k=3)


def _fit(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """The photo scaled to cover height x width, centre-cropped to it."""
    scale = max(height / photo.shape[0], width / photo.shape[1])
    scaled = cv2.resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)),
                        interpolation=cv2.INTER_AREA)
    top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
    return scaled[top:top + height, left:left + width]


class PanningCamera(Source):
    """A live camera at `fps` panning over photos, SCENE_FRAMES frames each, its frame number drawn at the
    bottom right (every frame differs); it ends when `stop` is set."""

    live = True

    def __init__(self, photos: list[np.ndarray], fps: float = 20.0):
        super().__init__("test://panning")
        self.scenes = [_fit(photo, HEIGHT, WIDTH + PAN) for photo in photos]
        self.period = 1.0 / fps
        self.stop = threading.Event()
        self._next_at = 0.0

    def _open(self) -> None:
        self._next_at = time.monotonic()

    def _read(self):
        self._next_at = max(self._next_at + self.period, time.monotonic())  # late: no burst to catch up
        if self.stop.wait(max(0.0, self._next_at - time.monotonic())):
            return None
        scene, step = divmod(self._index, SCENE_FRAMES)
        left = step * PAN // SCENE_FRAMES
        image = np.ascontiguousarray(self.scenes[scene % len(self.scenes)][:, left:left + WIDTH])
        cv2.putText(image, f"#{self._index}", (WIDTH - 110, HEIGHT - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.9,
                    (255, 255, 255), 2, cv2.LINE_AA)
        return image, time.time()


class LiveLoop:
    """run_loop in a thread over a PanningCamera with a preview on `port`; keeps its JSON lines by frame."""

    def __init__(self, classifier: Classifier, photos: dict[str, np.ndarray], port: int):
        self.port = port
        self.camera = PanningCamera(list(photos.values()))
        self.lines: dict[int, dict] = {}
        self.summary = self.error = None
        config = LoopConfig(preview=PreviewConfig(port=port, fps=15, events_fps=10), handle_sigterm=False)
        self._thread = threading.Thread(target=self._run, args=(classifier, config), daemon=True)

    def _run(self, classifier: Classifier, config: LoopConfig) -> None:
        try:
            self.summary = run_loop(classifier, self.camera, config, out=self)
        except BaseException as error:  # shown by __enter__ / __exit__, not lost in the thread
            self.error = error

    def write(self, text: str) -> None:  # the loop's `out`: one whole JSON line per write
        for line in text.splitlines():
            answer = json.loads(line)
            self.lines[answer["frame"]] = answer

    def flush(self) -> None:
        pass

    def __enter__(self) -> "LiveLoop":
        self._thread.start()
        deadline = time.monotonic() + WAIT_S
        while True:  # until the preview listens
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read()
                return self
            except OSError:
                assert self.error is None, f"the loop failed: {self.error!r}"
                assert time.monotonic() < deadline, "the preview never came up"
                time.sleep(0.05)

    def __exit__(self, *exc_info) -> None:
        self.camera.stop.set()
        self._thread.join(WAIT_S)
        assert self.error is None, f"the loop failed: {self.error!r}"
        assert self.summary is not None and self.summary.stopped_by == "end", self.summary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read_events(response, count: int) -> list[dict]:
    events = []
    while len(events) < count:
        line = response.readline()
        assert line, "the event stream ended"
        if line.startswith(b"data: "):
            events.append(json.loads(line[len(b"data: "):]))
    return events


def test_page_is_self_contained():
    assert "://" not in PAGE and "url(" not in PAGE and "@import" not in PAGE  # works offline
    assert set(re.findall(r'(?:src|href)="([^"]*)"', PAGE)) == {"/stream.mjpg", "/snapshot.jpg", "/metrics"}
    assert 'new EventSource("/events")' in PAGE


@pytest.mark.parametrize("events_fps", [0, 16, 60])
def test_events_are_rate_limited_to_what_a_person_reads(events_fps):
    with pytest.raises(ValueError, match=f"events_fps {events_fps} is invalid"):
        PreviewConfig(events_fps=events_fps)


def test_events_carry_the_json_line_of_their_frame(classifier, photos):
    port = _free_port()
    with LiveLoop(classifier, photos, port) as loop:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/events", timeout=10) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.readline() == f"retry: {RETRY_MS}\n".encode()
            events = _read_events(response, 3)
    frames = [event["frame"] for event in events]
    assert frames == sorted(set(frames)), frames
    for event in events:
        line = loop.lines[event["frame"]]
        for key in ("frame", "timestamp", "label", "score", "top_k", "latency_ms"):
            assert event[key] == line[key], (key, event, line)
        assert len(event["top_k"]) == 3 and event["fps"] >= 0 and event["age_ms"] >= 0
        assert set(event) == {"frame", "timestamp", "label", "score", "top_k", "latency_ms", "fps", "age_ms"}


def test_preview_bench_measures_both_kinds_of_run(tiny_bundle):
    from edgevision.runtime.preview_bench import bench, format_figures

    figures = bench(str(tiny_bundle.folder), frames=2000, repeats=2)
    assert len(figures["fps_without_preview"]) == len(figures["fps_with_preview"]) == len(figures["viewer"]) == 2
    assert figures["median_fps_without"] > 0 and figures["median_fps_with"] > 0 and figures["ratio"] > 0
    text = format_figures(figures)
    for expected in ("without preview:", "with preview + 1 viewer:", "ratio with/without:", "avx512_vnni:"):
        assert expected in text, text


# --- in a browser ---

SHOWN = """
const text = (id) => document.getElementById(id).textContent;
return {state: document.body.dataset.state, status: text("status"), frame: text("frame"), label: text("label"),
        bars: [...document.querySelectorAll("#bars .bar")].map(
            (row) => [row.querySelector(".name").textContent, row.querySelector(".pct").textContent]),
        width: document.getElementById("stream").naturalWidth};
"""


@pytest.fixture
def browser():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root; --disable-dev-shm-usage: containers have a small /dev/shm.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,640",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition, message)


def _shows_answers_of(driver, loop: LiveLoop, count: int = 3) -> None:
    """Wait until the page has shown `count` different live frames, each with the loop's answer for it."""
    seen = set()

    def check(driver) -> bool:
        shown = driver.execute_script(SHOWN)  # one script: frame and label are read together
        if shown["state"] != "live":
            return False
        line = loop.lines[int(shown["frame"])]
        assert shown["label"] == (line["label"] if line["label"] is not None else "(unsure)"), (shown, line)
        assert [name for name, _ in shown["bars"]] == [name for name, _ in line["top_k"]], (shown, line)
        for (_, percent), (_, score) in zip(shown["bars"], line["top_k"]):
            assert abs(int(percent.rstrip("%")) - 100 * score) <= 0.51, (shown, line)
        seen.add(shown["frame"])
        return len(seen) >= count

    _wait(driver, check, f"the page did not show {count} live frames; saw {sorted(seen)}")


def _picture_moves(driver) -> None:
    """Wait until the picture has loaded and then changed twice (once could be a frozen one replaced)."""
    from selenium.webdriver.common.by import By

    image = driver.find_element(By.ID, "stream")
    _wait(driver, lambda d: d.execute_script(SHOWN)["width"] > 0, "the picture never loaded")
    for _ in range(2):
        before = image.screenshot_as_png
        _wait(driver, lambda d: image.screenshot_as_png != before, "the picture does not change")


def test_live_page_follows_the_loop_and_recovers_when_the_stream_reconnects(browser, classifier, photos):
    from selenium.webdriver.common.by import By

    port = _free_port()
    with LiveLoop(classifier, photos, port) as first:
        browser.get(f"http://127.0.0.1:{port}/")
        _shows_answers_of(browser, first)
        _picture_moves(browser)
        if os.environ.get("EDGEVISION_SCREENSHOT"):
            # Later frames: the loop's fps figure (a moving average) has settled by then.
            _wait(browser, lambda d: (frame := d.execute_script(SHOWN)["frame"]).isdigit() and int(frame) >= 40,
                  "the page never reached frame 40")
            browser.save_screenshot(os.environ["EDGEVISION_SCREENSHOT"])
    # The loop ended and its server with it: the page says so instead of freezing on the last answer.
    _wait(browser, lambda d: d.execute_script(SHOWN)["state"] == "reconnecting", "no reconnecting state")
    assert browser.find_element(By.ID, "banner").is_displayed()
    assert browser.execute_script(SHOWN)["status"] == "reconnecting\u2026"
    with LiveLoop(classifier, photos, port) as second:  # a new server on the same port, frames from 0 again
        _shows_answers_of(browser, second)
        _picture_moves(browser)  # the <img> was reconnected too
        assert not browser.find_element(By.ID, "banner").is_displayed()
