"""The page in a real browser (Debian chromium driven by Playwright): upload, ask, read the answer.

Leaves a screenshot at out/screenshots/app.png. Chromium is installed by .ci/run (apt), never downloaded.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT = REPO / "out" / "screenshots" / "app.png"
ANSWER_TIMEOUT_MS = 240_000
# Uploads, page loads and redraws: seconds on an idle machine, past 30 s on a 2-core one that also runs
# an evaluation (an upload's name took longer than 30 s to show there).
UI_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium chromium-driver)"
        print(reason)
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def _pick_images(tire_dir: Path) -> tuple[Path, Path]:
    preferred = tire_dir / "test" / "contamination" / "021.jpg"
    query = preferred if preferred.is_file() else sorted((tire_dir / "test").rglob("*.jpg"))[0]
    return query, sorted((tire_dir / "train" / "good").glob("*.jpg"))[0]


def _open(browser, url: str, height: int):
    """A page of the app, loaded, and the list its script errors are collected in."""
    page = browser.new_page(viewport={"width": 1440, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.locator("#send").wait_for(timeout=UI_TIMEOUT_MS)
    return page, errors


def test_upload_ask_and_see_answer_and_heatmap(browser, app_server, tire_dir, tmp_path):
    query, reference = _pick_images(tire_dir)
    page, errors = _open(browser, app_server.url, 1000)
    assert "Anomaly Assistant" in page.title()

    page.locator("#query-image input[type=file]").set_input_files(str(query))
    page.locator("#references input[type=file]").set_input_files([str(reference)])
    page.locator("#references").get_by_text(reference.name).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.locator("#class-name textarea, #class-name input").first.fill("tire")

    page.locator("#message textarea").fill("Is there any anomaly in this tire?")
    page.locator("#send").click()
    verdict = page.locator("#verdict")
    verdict.wait_for(timeout=ANSWER_TIMEOUT_MS)
    page.locator("#heatmap img").wait_for(timeout=UI_TIMEOUT_MS)
    chat = page.locator("#chatbot")
    assert "Is there any anomaly in this tire?" in chat.inner_text()
    first = chat.inner_text()
    assert "anomaly in this tire" in first.split("Is there any anomaly in this tire?", 1)[1]
    assert "score" in verdict.inner_text() and "threshold" in verdict.inner_text()

    page.locator("#message textarea").fill("Where is it?")
    page.locator("#message textarea").press("Enter")
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.split('Where is it?').length > 1 "
                           "&& document.querySelector('#chatbot').innerText.split('Where is it?')[1].trim().length > 20",
                           timeout=ANSWER_TIMEOUT_MS)
    assert page.locator("#download").is_enabled()
    page.wait_for_timeout(500)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    # a broken upload is answered with one line in the chat; the page keeps working
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    page.locator("#query-image input[type=file]").set_input_files(str(broken))
    page.locator("#message textarea").fill("And this one?")
    page.locator("#send").click()
    page.locator("#verdict-problem").wait_for(timeout=UI_TIMEOUT_MS)
    assert "broken.png: not a readable image" in chat.inner_text()
    assert not errors, errors
    page.close()


def test_save_the_uploaded_references_as_a_profile_and_ask_with_it(browser, app_server, tire_dir):
    """The good images uploaded as references become a named profile; asked with it selected, the
    verdict says the profile judged the image, and the profile is on disk for the command line."""
    from assistant import profiles

    query, reference = _pick_images(tire_dir)
    page, errors = _open(browser, app_server.url, 1100)
    page.locator("#references input[type=file]").set_input_files([str(reference)])
    page.locator("#references").get_by_text(reference.name).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.locator("#class-name textarea, #class-name input").first.fill("tire")
    page.locator("#save-profile-box").get_by_text("Save the references as a profile").first.click()
    page.locator("#profile-name textarea, #profile-name input").first.fill("tire-browser")
    page.locator("#save-profile").click()
    page.locator("#profile-status").get_by_text("tire-browser").first.wait_for(timeout=ANSWER_TIMEOUT_MS)
    assert "tire-browser" in profiles.names()
    assert page.locator("#profile input").first.input_value() == "tire-browser"

    page.locator("#query-image input[type=file]").set_input_files(str(query))
    page.locator("#message textarea").fill("Is there any anomaly in this tire?")
    page.locator("#send").click()
    verdict = page.locator("#verdict")
    verdict.wait_for(timeout=ANSWER_TIMEOUT_MS)
    assert "profile 'tire-browser'" in verdict.inner_text() and "1 reference" in verdict.inner_text()
    assert not errors, errors
    page.close()


def test_defect_kinds_and_the_reference_place_in_the_page(browser, app_server, tire_dir, tmp_path):
    """Defect examples uploaded as a .zip name the kind; "Compare it with the reference" shows the
    region and the same place on the reference side by side. Leaves out/screenshots/defect_kind.png."""
    from test_defect_kinds import copy_examples, masked, zip_folder

    defects = tmp_path / "defects"
    for kind in ("contamination", "cut", "hole"):
        copy_examples(defects, kind, masked(tire_dir, kind)[:3])
    archive = zip_folder(defects, tmp_path / "tire-defects.zip", "defects/")
    query, reference = masked(tire_dir, "contamination")[6][0], sorted((tire_dir / "train" / "good").glob("*.jpg"))[0]
    page, errors = _open(browser, app_server.url, 1300)
    page.locator("#query-image input[type=file]").set_input_files(str(query))
    page.locator("#references input[type=file]").set_input_files([str(reference)])
    page.locator("#references").get_by_text(reference.name).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.locator("#class-name textarea, #class-name input").first.fill("tire")
    page.locator("#defect-kinds-box").get_by_text("Defect kinds (optional)").first.click()
    page.locator("#defect-examples input[type=file]").set_input_files(str(archive))
    page.locator("#defect-examples").get_by_text(archive.name).first.wait_for(timeout=UI_TIMEOUT_MS)

    page.locator("#message textarea").fill("What kind of defect is it?")
    page.locator("#send").click()
    page.wait_for_function("() => /looks most like|none of the kinds you gave me/.test("
                           "document.querySelector('#chatbot').innerText)", timeout=ANSWER_TIMEOUT_MS)
    page.locator("#message textarea").fill("Compare it with the reference")
    page.locator("#send").click()
    page.wait_for_function("() => /reference 1/.test((document.querySelector('#chatbot').innerText"
                           ".split('Compare it with the reference')[1] || ''))", timeout=ANSWER_TIMEOUT_MS)
    page.wait_for_function("() => document.querySelectorAll('#region-zoom img').length >= 2", timeout=UI_TIMEOUT_MS)
    assert "reference 1, same place" in page.locator("#region-zoom").inner_text()
    page.wait_for_timeout(500)
    shot = SCREENSHOT.with_name("defect_kind.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors, errors
    page.close()
