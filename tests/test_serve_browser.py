"""The search page in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python
API) against the live server: it loads, a typed text and an uploaded image each show ranked
results, a dropped sound goes to the audio slot; a screenshot is saved."""

from __future__ import annotations

import base64
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

from onepeace.serve.app import ServerThread, create_app  # noqa: E402
from test_serve import world  # noqa: E402,F401  (the tiny model and its index)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable on PATH (apt-get install chromium)")]
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(world, browser):  # noqa: F811
    with ServerThread(create_app(world["model"], world["index"])) as server:
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        pg.problems = []
        pg.on("console", lambda m: m.type == "error" and pg.problems.append(f"console: {m.text}"))
        pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
        pg.on("requestfailed", lambda r: pg.problems.append(f"request failed: {r.url}"))
        pg.goto(server.url + "/")
        yield pg
        pg.close()


def results(page):
    page.wait_for_selector("#results li.result", timeout=20_000)
    return page.locator("#results li.result")


def test_page_loads_with_the_server_info(page):
    sync_api.expect(page.locator("#info")).to_contain_text("index: 3 audio, 3 image, 5 text", timeout=20_000)
    assert page.title() == "onepeace search"
    assert not page.problems, page.problems


def test_a_text_query_shows_ranked_results(page):
    page.fill("#text", "a pure tone")
    page.click("#search")
    sync_api.expect(page.locator("#status")).to_contain_text("results for text", timeout=20_000)
    hits = results(page)
    # "each kind": the best 6 images, audio clips and texts side by side (all 11 items here)
    assert hits.count() == 11
    assert page.locator("#results section h2").all_inner_texts() == ["Images (3)", "Audio (3)", "Texts (5)"]
    texts = page.locator("#results section.text li.result")
    assert texts.first.locator("blockquote").inner_text() == "a pure tone"  # the same text scores 1.0
    for kind in ("image", "audio", "text"):
        scores = [float(s) for s in page.locator(f"#results section.{kind} .score b").all_inner_texts()]
        assert scores == sorted(scores, reverse=True), (kind, scores)
    assert abs(float(texts.first.locator(".score b").inner_text()) - 1.0) < 1e-3
    assert page.locator("#results li.result.audio audio").count() == 3
    assert not page.problems, page.problems


def test_an_image_upload_query_shows_thumbnails(page, world, tmp_path):  # noqa: F811
    png = sorted(world["media"].glob("*.png"))[0]
    page.fill("#text", "")
    page.set_input_files("#image", str(png))
    sync_api.expect(page.locator("#image-preview")).to_be_visible()
    page.check('#target input[value="image"]')
    page.click("#search")
    sync_api.expect(page.locator("#status")).to_contain_text("3 results for image", timeout=20_000)
    hits = results(page)
    assert hits.count() == 3 and page.locator("#results li.result.image").count() == 3
    assert hits.first.locator(".caption").inner_text().endswith(png.name)  # the image itself ranks first
    page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not page.problems, page.problems


def test_a_dropped_sound_goes_to_the_audio_slot_and_weights_combine(page, world):  # noqa: F811
    wav = sorted(world["media"].glob("*.wav"))[0]
    data = base64.b64encode(wav.read_bytes()).decode()
    page.evaluate("""([name, data]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: "audio/wav"}));
        document.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", [wav.name, data])
    sync_api.expect(page.locator("#audio-slot .hint")).to_have_text(wav.name)
    page.locator("#w-image").fill("-0.5")  # image + audio, the image subtracted a little
    page.check('#target input[value=""]')
    page.click("#search")
    sync_api.expect(page.locator("#status")).to_contain_text("results for audio + image", timeout=20_000)
    assert results(page).count() == 11
    # an error is shown on the page, not thrown: a bad filter
    page.click("#query details summary")
    page.fill("#where", "nonsense (((")
    page.click("#search")
    sync_api.expect(page.locator("#status.error")).to_contain_text("nonsense", timeout=20_000)
    assert not [p for p in page.problems if "400" not in p], page.problems


def test_with_an_api_key_the_page_asks_for_it_and_sends_it(world, browser):  # noqa: F811
    app = create_app(world["model"], world["index"], api_key="s3cret")
    with ServerThread(app) as server:
        pg = browser.new_page()
        try:
            pg.goto(server.url + "/")
            sync_api.expect(pg.locator("#info")).to_contain_text("needs an API key", timeout=20_000)
            pg.fill("#text", "a red circle")
            pg.click("#search")
            sync_api.expect(pg.locator("#status.error")).to_contain_text("API key", timeout=20_000)
            pg.fill("#api-key", "s3cret")
            pg.dispatch_event("#api-key", "change")
            sync_api.expect(pg.locator("#info")).to_contain_text("index:", timeout=20_000)
            pg.check('#target input[value="image"]')
            pg.click("#search")
            sync_api.expect(pg.locator("#status")).to_contain_text("3 results", timeout=20_000)
            # thumbnails cannot send the key themselves: the page fetches them with it
            pg.wait_for_function("[...document.querySelectorAll('#results img')]"
                                 ".every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)")
        finally:
            pg.close()
