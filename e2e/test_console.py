"""The console in a real browser (Debian's chromium, driven by Playwright) against a gateway
started as a newcomer would: `dashgate serve --simulate`, empty store, no keys, no admin token.

One walk through, as an operator would: sign in with the bootstrap token, mint a key, chat with
it in the playground (streamed) with a picture from disk and one from the (fake) camera, see the
image policy's before/after figures, find the requests in the usage chart, table and CSV, a device token's request on the Devices
page, see and
delete a file the key uploaded, revoke the key and see the playground get the 401, sign out. Each page is saved as a screenshot under
test-artifacts/console/.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from conftest import REPO, Service, camera_jpeg

CHROMIUM = os.environ.get("DASHGATE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "console"
# Flags for a headless, offline, reproducible browser; the fake media device stands in for
# the camera (a generated test pattern), and its permission prompt is answered yes.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
# A safety net for a wedged page, not a behaviour check.
UI_WAIT_MS = 20_000
LEDGER_WAIT_S = 15
KEY_NAME = "glass3-console"


class FirstRun(Service):
    """`dashgate serve --simulate` in an empty directory: the lines after the address line
    carry the bootstrap admin token."""

    def __init__(self, work: Path) -> None:
        config = work / "dashgate.toml"
        # Prices only, so the usage page has costs to show; everything else is the default.
        config.write_text('[prices."qwen-vl-plus"]\ninput_per_million = 1.5\noutput_per_million = 4.5\n')
        super().__init__(
            "dashgate",
            ["serve", "--simulate", "--config", str(config), "--listen", "127.0.0.1:0"],
            work / "gateway.log",
            # Blank, whatever the caller's environment holds: this must be a first run.
            env={"DASHSCOPE_API_KEY": "", "DASHGATE_ADMIN_TOKEN": ""},
        )
        self.admin_token = self._read_token()

    def _read_token(self) -> str:
        assert self.process.stdout is not None
        # The lines follow the address line at once (already in the pipe's buffer, which is
        # why this reads on rather than waiting with select); EOF ends the search.
        for _ in range(5):
            line = self.process.stdout.readline().decode()
            if "admin token: " in line:
                return line.split("admin token: ", 1)[1].strip()
        pytest.fail(f"no `admin token:` line on stdout; log:\n{self.log()}", pytrace=False)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    service = FirstRun(tmp_path_factory.mktemp("console"))
    yield service
    service.stop()


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: `apt-get install chromium` (scripts/test.sh does)", pytrace=False)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as p:
        yield p


def browser(playwright, profile: Path, locale: str, **extra):
    """Chromium with a fresh profile of its own (nothing carried over between runs)."""
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": 1360, "height": 900},
        locale=locale,
        **extra,
    )
    context.set_default_timeout(UI_WAIT_MS)
    return context


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory, playwright, first_run: FirstRun):
    context = browser(
        playwright,
        tmp_path_factory.mktemp("chromium-profile"),
        "en-US",
        accept_downloads=True,
        permissions=["camera", "clipboard-read", "clipboard-write"],
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page, errors
    context.close()


def jpeg_with_gps(width: int, height: int) -> bytes:
    """A camera frame carrying an EXIF block with GPS coordinates, as a phone would write it."""
    from PIL import Image

    image = Image.open(io.BytesIO(camera_jpeg(width, height)))
    exif = Image.Exif()
    exif[0x010F] = "glass3"  # Make
    exif.get_ifd(0x8825).update({1: "N", 2: (31.0, 13.0, 49.0), 3: "E", 4: (121.0, 28.0, 25.0)})
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def ledger_holds(first_run: FirstRun, key: str, requests: int) -> dict:
    """Waits until the ledger holds `requests` records of `key` (its writer is asynchronous by
    design; the deadline only keeps a broken writer from hanging the run)."""
    deadline = time.monotonic() + LEDGER_WAIT_S
    headers = {"authorization": f"Bearer {first_run.admin_token}"}
    with httpx2.Client(base_url=first_run.url, headers=headers, timeout=10) as admin:
        while True:
            totals = admin.get("/admin/api/usage", params={"key": key}).json()["totals"]
            if totals["requests"] >= requests or time.monotonic() > deadline:
                assert totals["requests"] == requests, totals
                return totals
            time.sleep(0.05)


def send_and_wait(page) -> dict:
    """Sends the playground's form; returns the chat response's headers once the answer is in."""
    with page.expect_response(lambda r: r.url.endswith("/chat/completions")) as info:
        page.click("#pg-send")
    response = info.value
    page.wait_for_selector("#pg-send:not([disabled])")
    return {"status": response.status, **response.headers}


def test_console_walkthrough(first_run: FirstRun, browser_page) -> None:
    from playwright.sync_api import expect

    page, errors = browser_page
    base = first_run.url

    # Sign in: a wrong token is refused, the bootstrap token gets in; the cookie is HttpOnly
    # and SameSite=Strict, and the console asks to replace the bootstrap token.
    page.goto(f"{base}/admin")
    expect(page.locator("#signin-form")).to_be_visible()
    shot(page, "01-signin")
    page.fill("#admin-token", "dga-not-the-token")
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_have_text("That is not the admin token.")
    page.fill("#admin-token", first_run.admin_token)
    page.click("#signin-button")
    expect(page.locator("#nav-overview")).to_be_visible()
    expect(page.locator("#bootstrap-banner")).to_be_visible()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["dashgate_session"]["httpOnly"] is True
    assert cookies["dashgate_session"]["sameSite"] == "Strict"
    expect(page.locator("#upstreams")).to_contain_text("simulator")
    shot(page, "02-overview-empty")

    # Mint a key: shown once, with a copy button.
    page.click("#nav-keys")
    page.fill("#create-form input[name=name]", KEY_NAME)
    page.fill("#create-form input[name=rpm]", "600")
    page.click("#create-form button[type=submit]")
    minted = page.locator("#minted-key")
    expect(minted).to_have_text(re.compile(r"^sk-dg-[0-9a-f]{48}$"))
    key = minted.inner_text()
    row = page.locator(f"#keys-table tr[data-key='{KEY_NAME}']")
    expect(row).to_contain_text("active")
    expect(row).to_contain_text("600 rpm")
    page.click("#new-key button.copy")
    assert page.evaluate("navigator.clipboard.readText()") == key
    shot(page, "03-keys-minted")

    # Edit its limits: a higher rpm and an allow-list (the models the playground uses below).
    row.locator("button[data-action=edit]").click()
    page.fill("#edit-form input[name=rpm]", "1200")
    page.fill("#edit-form input[name=models]", "qwen-vl-plus, qwen-plus")
    page.click("#edit-form button[type=submit]")
    expect(row).to_contain_text("1,200 rpm")
    expect(row).to_contain_text("qwen-vl-plus, qwen-plus")

    # Playground: the key minted in this tab is offered; a picture from disk (larger than the
    # 1 MP budget, so the policy shrinks it) goes with a streamed chat through /compatible-mode.
    page.click("#nav-playground")
    expect(page.locator("#pg-key")).to_have_value(KEY_NAME)
    expect(page.locator("#pg-models option[value='qwen-vl-plus']")).to_have_count(1)
    page.fill("#pg-model", "qwen-vl-plus")
    frame = jpeg_with_gps(2560, 1920)
    page.set_input_files("#pg-file", files=[{"name": "frame.jpg", "mimeType": "image/jpeg", "buffer": frame}])
    expect(page.locator("#pg-preview img")).to_be_visible()
    headers = send_and_wait(page)
    assert headers["status"] == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-dashgate-upstream"] == "simulator"
    expect(page.locator("#pg-answer")).not_to_be_empty()
    assert page.locator("#pg-error").inner_text() == ""
    figures = page.locator("#image-figures")
    expect(figures).to_be_visible()
    before = int(headers["x-dashgate-image-original-bytes"])
    after = int(headers["x-dashgate-image-sent-bytes"])
    # The bytes the page sent, and what went upstream after the downscale (a re-encoded
    # synthetic frame need not be smaller in bytes; its token estimate is).
    assert before == len(frame) and after > 0, headers
    expect(figures).to_contain_text(f"{before:,}")
    expect(figures).to_contain_text(f"{after:,}")
    assert (headers["x-dashgate-image-metadata-stripped"], headers["x-dashgate-image-resized"]) == ("1", "1")
    expect(figures).to_contain_text("1 / 1")
    tokens_before = int(headers["x-dashgate-image-tokens-before"])
    tokens_after = int(headers["x-dashgate-image-tokens-after"])
    assert tokens_after < tokens_before, headers
    shot(page, "04-playground-picture")

    # The camera (Chromium's fake device): a snapshot replaces the picture and goes along.
    page.click("#pg-camera")
    expect(page.locator("#pg-snap")).to_be_enabled()
    page.click("#pg-snap")
    expect(page.locator("#pg-preview img")).to_have_attribute("src", re.compile("^data:image/jpeg;base64,"))
    headers = send_and_wait(page)
    assert headers["status"] == 200 and headers["x-dashgate-image-count"] == "1", headers
    expect(page.locator("#pg-answer")).not_to_be_empty()
    shot(page, "05-playground-camera")

    # Usage: both requests, in the chart, the table and the CSV.
    ledger_holds(first_run, KEY_NAME, 2)
    page.click("#nav-usage")
    expect(page.locator("#chart-usage canvas")).to_have_count(1)
    usage_row = page.locator("#usage-table tbody tr", has_text=KEY_NAME)
    expect(usage_row).to_have_count(1)
    expect(usage_row.locator("td").nth(3)).to_have_text("2")
    with page.expect_download() as download:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    mine = [r for r in rows if r["key"] == KEY_NAME]
    assert len(mine) == 1 and mine[0]["model"] == "qwen-vl-plus" and mine[0]["requests"] == "2", rows
    assert int(mine[0]["image_tokens"]) >= 0 and float(mine[0]["cost"]) > 0, mine
    shot(page, "06-usage")

    # The overview charts now have the requests.
    page.click("#nav-overview")
    expect(page.locator("#stat-requests .big")).to_have_text("2")
    expect(page.locator("#chart-latency canvas")).to_have_count(1)
    shot(page, "07-overview")

    # Devices: a device token (minted with the admin token for account `acme`) chats once; the
    # Devices page shows the request under its account and device.
    admin_headers = {"authorization": f"Bearer {first_run.admin_token}"}
    minted_token = httpx2.post(
        f"{base}/v1/device-tokens",
        headers=admin_headers,
        json={"account": "acme", "device_id": "glass-e2e", "ttl_seconds": 600},
        timeout=10,
    )
    assert minted_token.status_code == 200, minted_token.text
    chat = httpx2.post(
        f"{base}/v1/chat/completions",
        headers={"authorization": f"Bearer {minted_token.json()['token']}"},
        json={"model": "qwen-plus", "messages": [{"role": "user", "content": "Hello from the glasses"}]},
        timeout=10,
    )
    assert chat.status_code == 200, chat.text
    ledger_holds(first_run, "acme/glass-e2e", 1)
    page.click("#nav-devices")
    device_row = page.locator("#devices-table tr[data-device='acme/glass-e2e']")
    expect(device_row.locator("td").nth(0)).to_have_text("acme")
    expect(device_row.locator("td").nth(1)).to_have_text("glass-e2e")
    expect(device_row.locator("td").nth(2)).to_have_text("1")
    shot(page, "14-devices")

    # Files: one uploaded with the key shows with its owner and size, and can be deleted.
    upload = httpx2.post(
        f"{base}/v1/files",
        headers={"authorization": f"Bearer {key}"},
        files={"file": ("notes.txt", b"glasses field notes\n" * 50, "text/plain")},
        data={"purpose": "file-extract"},
        timeout=10,
    )
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    page.click("#nav-files")
    file_row = page.locator(f"#files-table tr[data-file='{file_id}']")
    expect(file_row).to_contain_text("notes.txt")
    expect(file_row).to_contain_text(KEY_NAME)
    expect(file_row).to_contain_text("1000 B")
    shot(page, "08-files")
    page.once("dialog", lambda d: d.accept())
    file_row.locator("button[data-action=delete]").click()
    expect(page.locator("#no-files")).to_be_visible()
    listed = httpx2.get(f"{base}/v1/files", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert listed.json()["data"] == [], listed.text

    # Per-key chart, then revoke: the playground (key still held in the tab) now gets the 401.
    page.click("#nav-keys")
    page.click(f"#keys-table tr[data-key='{KEY_NAME}'] button[data-action=chart]")
    expect(page.locator("#chart-key canvas")).to_have_count(1)
    page.once("dialog", lambda d: d.accept())
    page.click(f"#keys-table tr[data-key='{KEY_NAME}'] button[data-action=revoke]")
    expect(page.locator(f"#keys-table tr[data-key='{KEY_NAME}']")).to_contain_text("revoked")
    expect(page.locator(f"#keys-table tr[data-key='{KEY_NAME}']")).to_contain_text("1,200 rpm")
    shot(page, "09-keys-revoked")
    page.click("#nav-playground")
    page.click("#pg-preview button")
    headers = send_and_wait(page)
    assert headers["status"] == 401
    expect(page.locator("#pg-error")).to_contain_text("401")
    expect(page.locator("#pg-answer")).to_be_empty()
    shot(page, "10-playground-401")

    # Sign out: the session ends on the server too, so the API refuses the old cookie.
    page.click("#signout")
    expect(page.locator("#signin-form")).to_be_visible()
    status = page.evaluate("fetch('/admin/api/keys', {credentials: 'same-origin'}).then(r => r.status)")
    assert status == 401
    shot(page, "11-signed-out")
    assert errors == [], errors


def test_console_follows_the_browser_language(first_run: FirstRun, playwright, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    context = browser(playwright, tmp_path / "profile", "zh-CN")
    page = context.new_page()
    page.goto(f"{first_run.url}/admin")
    expect(page.locator("#signin-button")).to_have_text("登录")
    page.fill("#admin-token", first_run.admin_token)
    page.click("#signin-button")
    expect(page.locator("#nav-usage")).to_have_text("用量")
    page.click("#nav-keys")
    expect(page.locator("#keys-table")).to_contain_text("已吊销")
    shot(page, "12-keys-zh")

    # Replacing the bootstrap token: the new one is shown once and signs this page in; the
    # bootstrap token no longer works.
    page.click("#replace-token")
    new_token = page.locator("#new-admin-token code").inner_text()
    assert new_token.startswith("dga-") and new_token != first_run.admin_token
    expect(page.locator("#bootstrap-banner")).to_have_count(0)
    expect(page.locator("#nav-keys")).to_be_visible()
    shot(page, "13-token-replaced-zh")
    old = httpx2.get(f"{first_run.url}/admin/api/keys", headers={"authorization": f"Bearer {first_run.admin_token}"})
    new = httpx2.get(f"{first_run.url}/admin/api/keys", headers={"authorization": f"Bearer {new_token}"})
    assert (old.status_code, new.status_code) == (401, 200)
    context.close()
