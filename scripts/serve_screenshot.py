"""Screenshot of the search page (``make screenshot``: docs/serve.png from the demo index).

Serves the index with ``onepeace serve``'s app on a free local port, opens the page in headless
Chromium (Playwright pointed at Debian's ``chromium``), runs one composed query — a text plus an
indexed spoken clip — and saves the page. Look at the image before committing it.

    python scripts/serve_screenshot.py                     # runs/demo/index -> docs/serve.png
    python scripts/serve_screenshot.py --index DB --out shot.png --text "a dog" --audio none
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile


def pick_audio(index, word: str) -> str | None:
    """An indexed audio file whose caption or metadata mentions ``word`` (else the first one)."""
    rows = sorted(index.rows(("id", "uri", "text", "metadata"), where="modality = 'audio'"), key=lambda r: r["id"])
    rows = [r for r in rows if r["uri"] and os.path.isfile(r["uri"])]
    for r in rows:
        if word and (word in (r["text"] or "").lower() or word in (r["metadata"] or "").lower()):
            return r["uri"]
    return rows[0]["uri"] if rows else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="runs/demo/index")
    ap.add_argument("--model", help="default: the model recorded in the index")
    ap.add_argument("--out", default="docs/serve.png")
    ap.add_argument("--text", default="a handwritten digit seven")
    ap.add_argument("--audio", default="auto", help="an audio file, 'auto' (an indexed clip of --word) or 'none'")
    ap.add_argument("--word", default="seven", help="with --audio auto: the clip's caption or label mentions it")
    ap.add_argument("--audio-weight", default="0.5")
    ap.add_argument("--modality", default="", help="the results' modality (default: each kind, side by side)")
    ap.add_argument("--k", default="6", help="results (of each kind)")
    ap.add_argument("--width", type=int, default=1200)
    args = ap.parse_args(argv)

    if not os.path.isdir(args.index):
        print(f"serve_screenshot: no index at {args.index}: run `make demo` first (it builds runs/demo/index)",
              file=sys.stderr)
        return 2
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("serve_screenshot: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import expect, sync_playwright

    from onepeace.cli.serve import load_served
    from onepeace.errors import OnePeaceError
    from onepeace.serve.app import ServerThread, create_app

    try:
        model, index = load_served(args.index, args.model)
    except OnePeaceError as e:
        print(f"serve_screenshot: error: {e}", file=sys.stderr)
        return 2
    audio = None if args.audio == "none" else pick_audio(index, args.word) if args.audio == "auto" else args.audio
    with ServerThread(create_app(model, index)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": args.width, "height": 800}, device_scale_factor=1)
        page.goto(server.url + "/")
        expect(page.locator("#info")).to_contain_text("index:", timeout=30_000)
        if args.text:
            page.fill("#text", args.text)
        if audio:
            page.set_input_files("#audio", audio)
            page.locator("#w-audio").fill(args.audio_weight)
        page.check(f'#target input[value="{args.modality}"]')
        page.fill("#k", args.k)
        page.click("#search")
        expect(page.locator("#status")).to_contain_text("result", timeout=60_000)
        page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(os.path.abspath(args.out)))
        os.close(fd)
        try:
            page.screenshot(path=tmp, full_page=True)
            os.chmod(tmp, 0o644)  # mkstemp makes it private
            os.replace(tmp, args.out)  # atomic: the old screenshot or the new one
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        status = page.locator("#status").inner_text()
        browser.close()
    print(f"wrote {args.out} ({status}); look at it before committing it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
