"""The search page shows a moment (issue 24, item 3) in a real headless Chromium: a moment search
of a small index holding a long recording answers a player that starts at the range's start
(its ``currentTime`` once loaded), the range as text ("0:12–0:14") and marked on a timeline.
A screenshot is saved to /tmp/w/moments-page.png (or $MOMENTS_SCREENSHOT)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

import onepeace  # noqa: E402
from onepeace.search.moments import time_range  # noqa: E402
from onepeace.serve.app import ServerThread, create_app  # noqa: E402
from test_moments_index import SR, long_wav  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable on PATH (apt-get install chromium)")]
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
SHOT = Path(os.environ.get("MOMENTS_SCREENSHOT", "/tmp/w/moments-page.png"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import soundfile as sf
    import torch

    from onepeace.search import Index, build

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("page")
    onepeace.create_model("tiny", layer_scale_init=0.5).save_pretrained(root / "model")
    model = onepeace.OnePeace.from_pretrained(root / "model")
    media = root / "media"
    long_wav(media / "field-recording.wav", 75, seed=1)
    long_wav(media / "meeting.wav", 40, seed=2)
    r = build(root / "db", model, [media], workers=0, progress=False)
    assert r["moment_files"] == 2
    wave, _ = sf.read(media / "field-recording.wav", dtype="float32")
    sf.write(root / "query.wav", wave[41 * SR:43 * SR], SR)  # the window [41, 43) of the long recording
    return {"model": model, "index": Index.open(root / "db"), "query": root / "query.wav"}


@pytest.fixture(scope="module")
def page(world):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            with ServerThread(create_app(world["model"], world["index"])) as server:
                pg = browser.new_page(viewport={"width": 1200, "height": 900})
                pg.problems = []
                pg.on("console", lambda m: m.type == "error" and pg.problems.append(f"console: {m.text}"))
                pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
                pg.goto(server.url + "/")
                yield pg
                pg.close()
        finally:
            browser.close()


def test_a_moment_plays_from_its_start_with_the_range_marked(page, world):
    sync_api.expect(page.locator("#info")).to_contain_text("index:", timeout=20_000)
    page.set_input_files("#audio", str(world["query"]))
    page.check("#moments")
    page.click("#search")
    sync_api.expect(page.locator("#status")).to_contain_text("2 moments for audio", timeout=30_000)
    assert page.locator("#results section h2").all_inner_texts() == ["Moments (2)"]
    first = page.locator("#results li.result.moment").first
    assert first.locator(".caption").inner_text().endswith("field-recording.wav")
    start = float(first.locator(".moment-player").get_attribute("data-start"))
    end = float(first.locator(".moment-player").get_attribute("data-end"))
    assert start <= 41 and end >= 43 and end - start <= 6
    # the player has loaded its metadata and stands at the range's start (within a frame)
    page.wait_for_function("() => { const p = document.querySelector('#results li.moment .moment-player');"
                           " return p.readyState >= 1 && Math.abs(p.currentTime - Number(p.dataset.start)) < 0.05; }",
                           timeout=20_000)
    current = page.evaluate("document.querySelector('#results li.moment .moment-player').currentTime")
    assert abs(current - start) < 0.05, (current, start)
    assert "#t=" in page.evaluate("document.querySelector('#results li.moment .moment-player').src")
    # the range as text, and marked on the timeline where it lies in the 75 s file
    text = first.locator(".range").inner_text()
    assert text.startswith(time_range(start, end)) and "of 1:15" in text
    left = page.evaluate("parseFloat(document.querySelector('#results li.moment .timeline i').style.left)")
    width = page.evaluate("parseFloat(document.querySelector('#results li.moment .timeline i').style.width)")
    assert abs(left - 100 * start / 75) < 0.1 and abs(width - 100 * (end - start) / 75) < 0.1
    # a click on the range plays it from its start
    first.locator(".range").click()
    page.wait_for_function("() => !document.querySelector('#results li.moment .moment-player').paused", timeout=10_000)
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.querySelector('#results li.moment .moment-player').pause()")
    page.screenshot(path=str(SHOT), full_page=True)
    assert SHOT.stat().st_size > 10_000
    assert not page.problems, page.problems


def test_moments_of_an_index_without_them_say_so(page, world):
    page.check("#moments")
    page.route("**/search", lambda route: route.fulfill(
        status=400, content_type="application/json",
        body='{"error": {"message": "moments: this index has no moments", "type": "invalid_request_error"}}'))
    try:
        page.click("#search")
        sync_api.expect(page.locator("#status.error")).to_contain_text("no moments", timeout=20_000)
    finally:
        page.unroute("**/search")
