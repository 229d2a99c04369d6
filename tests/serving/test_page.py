"""The page (``GET /``) in a real headless browser against ``serve.py --tiny-random``: a text2music
and a repaint of an uploaded file, live progress, playing and downloading an output and its
record, reusing its parameters, cancelling a queued job.

Needs Chromium (Debian's ``chromium``, which ``.ci/run`` installs) and Playwright (the
``test`` extra); without a Chromium executable the test says so and skips.
"""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from tests.serving.test_shutdown import _start, _stop

CHROMIUM = os.environ.get("ACESTEP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium executable (apt-get install chromium)")
WAIT_MS = 300_000  # a first request compiles its programs on a busy 2-core machine


def _wait_status(card, status: str) -> None:
    card.locator(".status").filter(has_text=status).wait_for(timeout=WAIT_MS)


@pytest.mark.slow
def test_the_page_drives_every_step(tmp_path, lyrics_vocab_path):
    from playwright.sync_api import sync_playwright

    src = tmp_path / "source.wav"
    t = np.arange(44100 * 2) / 44100
    sf.write(src, np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1).astype(np.float32) * 0.3, 44100)
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - the server process writes it
    proc, url = _start(tmp_path / "state", tmp_path / "xla", lyrics_vocab_path, log)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 900})
            page.goto(url + "/")
            page.locator("#task option").first.wait_for(state="attached")
            assert page.locator("#task option").all_inner_texts() == [
                "text2music", "retake", "repaint", "extend", "edit", "audio2audio"]

            # text2music: progress, then a player, downloads and a record
            page.fill("#prompt", "rock, guitar")
            page.fill("#lyrics", "[verse]\nla la")
            page.fill("#duration", "0.5")
            page.fill("#infer_steps", "2")
            page.fill("#seeds", "7")
            page.click("#submit")
            card = page.locator(".job").first
            card.wait_for()
            assert card.locator(".status").inner_text() in ("queued", "running", "done")
            _wait_status(card, "done")
            assert card.locator("progress").evaluate("p => p.value") == 1
            card.locator("audio").wait_for(timeout=WAIT_MS)
            assert card.locator("audio").evaluate("a => a.src").startswith("blob:")
            played = card.locator("audio").evaluate(
                "a => { a.muted = true; return a.play().then(() => a.duration); }")
            assert 0.4 < played < 0.6  # the browser decodes and plays the 0.5 s output
            with page.expect_download() as download:
                card.locator("a.download").first.click()
            audio, rate = sf.read(download.value.path(), dtype="float32")
            assert rate == 48000 and audio.shape[1] == 2 and np.isfinite(audio).all()
            with page.expect_download() as download:
                card.locator("a.download").nth(1).click()
            record = json.loads(download.value.path().read_text())
            assert record["prompt"] == "rock, guitar" and record["seeds"] == [7] and record["infer_steps"] == 2
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

            # reuse those parameters, then repaint an uploaded file
            page.fill("#prompt", "something else")
            card.locator("button.reuse").click()
            page.wait_for_function("document.getElementById('prompt').value === 'rock, guitar'")
            assert page.input_value("#seeds") == "7" and page.input_value("#lyrics") == "[verse]\nla la"
            page.select_option("#task", "repaint")
            page.set_input_files("#src-file", str(src))
            page.click("#advanced summary")
            page.fill("#repaint_start", "0.5")
            page.fill("#repaint_end", "1.5")
            page.click("#submit")
            page.locator(".job").nth(1).wait_for()
            repaint = page.locator(".job").first
            _wait_status(repaint, "done")
            repaint.locator("audio").wait_for(timeout=WAIT_MS)  # the player follows the status
            assert repaint.locator("audio").count() == 1

            # a long job runs while a second waits: cancel the waiting one
            page.select_option("#task", "text2music")
            page.fill("#duration", "30")
            page.click("#submit")
            page.locator(".job").nth(2).wait_for()
            page.click("#submit")
            page.locator(".job").nth(3).wait_for()
            waiting = page.locator(".job").first
            waiting.locator(".status").filter(has_text="queued").wait_for(timeout=WAIT_MS)
            waiting.locator("button.cancel").click()
            _wait_status(waiting, "cancelled")
            _wait_status(page.locator(".job").nth(1), "done")
            assert page.locator("#form-error").inner_text() == ""
            browser.close()
    finally:
        _stop(proc)
        log.close()
    if os.environ.get("ACESTEP_PAGE_SCREENSHOT"):  # refresh the README's picture
        shutil.copyfile(tmp_path / "page.png", os.environ["ACESTEP_PAGE_SCREENSHOT"])
