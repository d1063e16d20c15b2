"""The browser UI end to end: headless Chromium (Debian ``chromium``) driven by Playwright against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf

from browser import browser, enter_key, open_page, sync_api  # noqa: F401  (fixture)
from live_service import API_KEY, JFK, JFK_PHRASE, live_service  # noqa: F401  (fixture)

import speech_mix
from service import Service

expect = sync_api.expect

pytestmark = pytest.mark.slow


@pytest.fixture
def page(browser: sync_api.Browser, live_service: Service) -> Iterator[sync_api.Page]:  # noqa: F811
    with open_page(browser, live_service.base_url) as page:
        yield page


def test_upload_progress_transcript_playback_and_download(page: sync_api.Page, tmp_path: Path) -> None:
    enter_key(page, API_KEY)
    expect(page.locator("#server-state")).to_have_text("server ready", timeout=20_000)
    # Templates come from the server, not the HTML.
    expect(page.locator("#template-id option[value='generic_summary_en_v2']")).to_have_count(1)
    # Record every status the badge shows, to prove live progress reached the page before completion.
    page.evaluate("""() => {
        window.__seen = [];
        const badge = document.getElementById('task-status');
        new MutationObserver(() => window.__seen.push(badge.textContent)).observe(badge, {childList: true});
        window.__uploadEvents = 0;
        const send = XMLHttpRequest.prototype.send;
        XMLHttpRequest.prototype.send = function (body) {
            this.upload.addEventListener('progress', () => window.__uploadEvents++);
            return send.call(this, body);
        };
    }""")

    page.set_input_files("#file-input", str(JFK))
    expect(page.locator("#file-name")).to_contain_text("jfk.flac")
    page.click("#submit-btn")

    transcript = page.locator("#transcript")
    expect(transcript).to_contain_text(JFK_PHRASE, ignore_case=True, timeout=120_000)
    expect(page.locator("#task-status")).to_have_text("Complete")
    expect(page.locator("#task-title")).to_have_text("jfk.flac")
    expect(page.locator("#task-bar")).to_have_js_property("value", 1)
    seen = page.evaluate("window.__seen")
    assert seen[-1] == "Complete" and any(s not in ("Complete", "Failed", "Cancelled") for s in seen), seen
    assert page.evaluate("window.__uploadEvents") >= 1
    expect(page.locator("#live-text")).to_be_hidden()  # the finished transcript took its place
    # Live progress came over the SSE stream (read with fetch), not only from the polling fallback.
    resources = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert any(name.endswith("/events") for name in resources), resources
    assert page.locator("#stepper li.done").count() >= 3
    # The recent-tasks list has the new task, marked as the current one.
    expect(page.locator(".task-item.current")).to_contain_text("jfk.flac")

    page.wait_for_timeout(500)  # let the progress bar's CSS transition finish before the screenshot
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # Click-to-play: the local file plays in the <audio> element from the clicked segment's start.
    page.wait_for_function("document.getElementById('player').readyState >= 1", timeout=20_000)
    lines = transcript.locator(".segment")
    starts = [float(s) for s in lines.evaluate_all("els => els.map(e => e.dataset.start)")]
    index = max(range(len(starts)), key=starts.__getitem__)
    # Start somewhere else (tiny.en gives jfk.flac one segment from 0.12 s): the click must move the player.
    page.evaluate(f"document.getElementById('player').currentTime = {starts[index] + 5.0}")
    lines.nth(index).click()
    current = page.evaluate("document.getElementById('player').currentTime")
    assert starts[index] - 0.05 <= current <= starts[index] + 1.5, (current, starts[index])
    expect(lines.nth(index)).to_have_class("segment active")

    # Downloads are fetched with the key and saved from a blob URL.
    with page.expect_download() as info:
        page.click(".downloads [data-format=srt]")
    download = info.value
    assert download.suggested_filename == "jfk.srt"
    body = Path(download.path()).read_text()
    assert "-->" in body and JFK_PHRASE in body.lower()


def test_text_shows_while_the_recording_is_transcribed(page: sync_api.Page, tmp_path: Path) -> None:
    """Text as ASR recognises it, shown before the task completes: 150 s of the reference clips in a
    varied order (``speech_mix``), several blocks, so the first block's text is out seconds before the
    last block's. (jfk.flac alone is one batched clip: its text and the completion reach the page in
    one network chunk. jfk.flac tiled is held back whole by the hallucination filter's repeat check.)"""
    mix = speech_mix.build(JFK.parent, 150)
    long = tmp_path / "mixed.wav"
    sf.write(long, mix.samples, speech_mix.SAMPLE_RATE, subtype="PCM_16")
    enter_key(page, API_KEY)
    expect(page.locator("#server-state")).to_have_text("server ready", timeout=20_000)
    # A MutationObserver runs after the script that changed the page, so the status read there is the
    # status once both a chunk's events are handled: a line shown with "Complete" beside it may have
    # been painted at the same moment as the completion. Hence each first sighting's time as well.
    page.evaluate("""() => {
        window.__live = [];
        const live = document.getElementById('live-text');
        const badge = document.getElementById('task-status');
        new MutationObserver(() => window.__live.push([live.textContent, badge.textContent, performance.now()]))
            .observe(live, {childList: true, characterData: true, subtree: true});
        window.__completeAt = null;
        new MutationObserver(() => {
            const first = badge.textContent === 'Complete' && window.__completeAt === null;
            if (first) window.__completeAt = performance.now();
        }).observe(badge, {childList: true});
    }""")
    page.set_input_files("#file-input", str(long))
    page.click("#submit-btn")
    expect(page.locator("#task-status")).to_have_text("Complete", timeout=180_000)
    live = page.evaluate("window.__live")
    complete_at = page.evaluate("window.__completeAt")
    shown = [(text, status, at) for text, status, at in live if text]
    assert shown and shown[0][1] != "Complete" and shown[0][2] < complete_at - 500, (live, complete_at)
    # The last block's text came later than the first's: the page grew while ASR ran.
    assert len({text for text, _, _ in shown}) >= 2, live
    expect(page.locator("#live-text")).to_be_hidden()
    expect(page.locator("#transcript")).to_contain_text(JFK_PHRASE, ignore_case=True)


def test_wrong_key_shows_the_server_error(page: sync_api.Page) -> None:
    enter_key(page, "not-the-key")
    banner = page.locator("#error")
    expect(banner).to_be_visible()
    expect(page.locator("#error-code")).to_have_text("UNAUTHORIZED")
    expect(page.locator("#error-detail")).to_contain_text("invalid API key")


def test_server_strings_are_inserted_as_text(page: sync_api.Page) -> None:
    hostile = "<img src=x onerror=window.__pwned=1>.flac"
    enter_key(page, API_KEY)
    page.set_input_files("#file-input", files=[{"name": hostile, "mimeType": "audio/flac",
                                                "buffer": JFK.read_bytes()}])  # fmt: skip
    page.click("#submit-btn")
    expect(page.locator("#task-title")).to_have_text(hostile)
    expect(page.locator(".task-item.current .task-item-name")).to_have_text(hostile)
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__pwned") is None
