"""The explorer page in headless Chromium (Debian's ``chromium``) driven by Playwright, against
``aiayn serve`` started as a subprocess on a free loopback port: type a sentence, see the
translation, pin and hover tokens, pick heads in the model view, switch kinds.

Chromium missing is a failure, not a skip, so CI really runs this (``make test`` installs it);
set AIAYN_SKIP_BROWSER=1 to skip on purpose. AIAYN_SAVE_SCREENSHOTS=1 also writes
docs/img/explorer.png; AIAYN_EXPLORER_MODEL and AIAYN_EXPLORER_SENTENCE choose the model and the
sentence for that picture (default: a random tiny model, which the assertions are written for).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from toydata import random_run

SENTENCE = os.environ.get("AIAYN_EXPLORER_SENTENCE", "en el principio creo dios los cielos")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "explorer.png"


@pytest.fixture(scope="module")
def chromium() -> str:
    if os.environ.get("AIAYN_SKIP_BROWSER") == "1":
        pytest.skip("AIAYN_SKIP_BROWSER=1")
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium not found: install Debian's with `apt-get install -y chromium` (`make test` does), "
            "or set AIAYN_SKIP_BROWSER=1 to skip the browser test",
            pytrace=False,
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(
            "playwright is not installed: `.venv/bin/pip install -e '.[test]'` (never `playwright install`; "
            "it uses the system chromium), or set AIAYN_SKIP_BROWSER=1",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    if os.environ.get("AIAYN_EXPLORER_MODEL"):
        return os.environ["AIAYN_EXPLORER_MODEL"]
    # Length limits, because a random model would stop at once, or never.
    return str(random_run(tmp_path_factory.mktemp("run"), min_len=4, max_len_offset=0))


@pytest.fixture(scope="module")
def url(chromium, model_path):
    """``aiayn serve --port 0``: the kernel picks a free port and the command prints its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiayn", "serve", "--model", model_path, "--port", "0", "--quiet", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if not found:
            proc.kill()
            pytest.fail(f"aiayn serve did not start: {line!r} {proc.communicate()[1][-2000:]}")
        yield found.group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


def post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        url.rstrip("/") + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def lines(page) -> list[dict]:
    """Every line of the head view: query, key, head and the opacity it is drawn with."""
    return page.eval_on_selector_all(
        "#lines line",
        """els => els.map(e => ({
        q: Number(e.dataset.q), k: Number(e.dataset.k), h: Number(e.dataset.h),
        opacity: Number(e.getAttribute('stroke-opacity'))}))""",
    )


@pytest.fixture
def page(browser, url):
    """The page after translating SENTENCE, with a guard against JavaScript errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.locator("#model").filter(has_text="step").wait_for()  # /health answered
    page.fill("#sentence", SENTENCE)
    page.press("#sentence", "Enter")
    page.wait_for_selector("#translation:not(:empty)")
    yield page
    context.close()
    assert errors == []


def test_translation_appears_and_pinning_a_token_shows_its_attention(page, url):
    api = post(url, "/attention", {"sentence": SENTENCE})
    assert page.inner_text("#translation") == api["translation"]
    assert api["translation"] == post(url, "/translate", {"sentences": [SENTENCE]})["translations"][0][0]["text"]
    w = api["weights"]["encoder"]
    last, heads, n = len(w) - 1, len(w[0]), len(api["source"])
    assert page.input_value("#kind") == "encoder" and page.input_value("#layer") == str(last)
    assert page.input_value("#head") == "all"
    before = lines(page)
    assert len(before) == heads * n * n
    assert all(abs(x["opacity"] - w[last][x["h"]][x["q"]][x["k"]]) < 1e-4 for x in before)

    page.click("#lines text.tok[data-side=q][data-i='1']")
    pinned = lines(page)
    assert [x["opacity"] for x in pinned] != [x["opacity"] for x in before]
    assert all(x["opacity"] == 0 for x in pinned if x["q"] != 1)
    assert all(abs(x["opacity"] - w[last][x["h"]][1][x["k"]]) < 1e-4 for x in pinned if x["q"] == 1)
    shades = page.eval_on_selector_all(
        "#lines rect.keybg", "els => els.map(e => Number(e.getAttribute('fill-opacity')))"
    )
    mean = [sum(w[last][h][1][k] for h in range(heads)) / heads for k in range(n)]  # over the shown heads
    assert shades == pytest.approx([0.6 * m for m in mean], abs=1e-3)
    assert page.get_attribute("#lines text.tok[data-side=q][data-i='1']", "class") == "tok selected"

    page.click("#lines text.tok[data-side=q][data-i='1']")  # unpin; hover a key instead
    page.hover("#lines text.tok[data-side=k][data-i='0']")
    hovered = lines(page)
    assert all((x["opacity"] > 0) == (x["k"] == 0 and w[last][x["h"]][x["q"]][0] > 0) for x in hovered)


def test_model_view_selects_a_head_and_kinds_switch(page, url, tmp_path):
    api = post(url, "/attention", {"sentence": SENTENCE})
    enc, cross = api["weights"]["encoder"], api["weights"]["cross"]
    assert page.locator("#grid canvas").count() == len(enc) * len(enc[0])
    page.click("#grid canvas[data-layer='0'][data-head='1']")
    assert page.input_value("#layer") == "0" and page.input_value("#head") == "1"
    assert page.get_attribute("#grid canvas[data-layer='0'][data-head='1']", "class") == "selected"
    shown = lines(page)
    assert {x["h"] for x in shown} == {1} and len(shown) == len(api["source"]) ** 2
    assert all(abs(x["opacity"] - enc[0][1][x["q"]][x["k"]]) < 1e-4 for x in shown)

    page.select_option("#kind", "cross")
    assert page.locator("#layer option").count() == len(cross)
    assert page.input_value("#head") == "all"
    assert len(lines(page)) == len(cross[0]) * len(api["target"]) * len(api["source"])
    page.click("#lines text.tok[data-side=q][data-i='2']")
    assert all(x["opacity"] == 0 for x in lines(page) if x["q"] != 2)

    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("AIAYN_SAVE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
