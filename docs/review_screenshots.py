"""Screenshots of the `rlaif review` page: the list and two row pages, as PNGs.

    python docs/review_screenshots.py [OUT_DIR] [--out docs/img]

OUT_DIR defaults to a copy of the test fixture (tests/fixtures/review: a run folder with SL-CAI,
preference, red-team and policy-eval rows), with a few labels by two people added to the copy so
the agreement tables have something to show; a folder you name is served as it is (its
review.sqlite is used, not changed, unless you label in the page). Needs Chromium, chromedriver
and selenium (`make chromium`, `pip install -e .[dev]`).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "review"


def _seed_labels(folder: Path) -> None:
    from rlaif.review.storage import FILE_NAME, LabelStore

    store = LabelStore(folder / FILE_NAME)
    for who, answers in {
        "ann": {"q1/0-1": "a", "q2/0-1": "a", "q3/0-1": "b", "q5/0-1": "a", "q9/0-1": "a"},
        "ben": {"q1/0-1": "a", "q2/0-1": "b", "q3/0-1": "b", "q5/0-1": "a", "q7/0-1": "a"},
    }.items():
        for rid, answer in answers.items():
            store.add("prefs", rid, "pair", answer, who)
    store.add("sl_cai", "p1", "revision_better", "b", "ann")
    store.add("sl_cai", "p1", "critique_real", "yes", "ann")


def _shrink(path: Path) -> None:
    """A 128-colour palette: a page of text and flat colours looks the same at a third of the
    size, small enough to keep in the repository."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, help="an output folder (the test fixture)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = ap.parse_args()

    import uvicorn
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from rlaif.review.folder import open_folder
    from rlaif.review.server import create_app

    tmp = Path(tempfile.mkdtemp(prefix="rlaif-review-shots-"))
    folder = args.folder
    if folder is None:
        folder = tmp / "run"
        shutil.copytree(FIXTURE, folder)
        _seed_labels(folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(open_folder(folder)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--window-size=1280,900", f"--user-data-dir={tmp / 'profile'}"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    wait = WebDriverWait(  # the page re-renders: an element found before may be gone
        driver, 15, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        base = f"http://127.0.0.1:{port}/"
        driver.get(base)
        driver.execute_script("localStorage.setItem('rlaif-review-labeler', 'ann')")
        driver.set_window_size(1280, 2140)
        driver.get(base)
        wait.until(lambda d: "rows shown" in d.find_element(By.ID, "count").text)
        wait.until(lambda d: "Agreement so far" in d.find_element(By.ID, "agreement-panel").text)
        driver.save_screenshot(str(args.out / "review-list.png"))

        driver.set_window_size(1280, 840)
        driver.get(base + "#/row?dataset=prefs&id=q6%2F0-1")
        wait.until(lambda d: d.find_elements(By.ID, "response-a"))
        driver.find_element(By.TAG_NAME, "body").send_keys("2")
        wait.until(lambda d: "AI:" in d.find_element(By.ID, "ai").text)
        driver.save_screenshot(str(args.out / "review-pair.png"))

        driver.set_window_size(1280, 1250)
        driver.get(base + "#/row?dataset=sl_cai&id=p5")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".round"))
        driver.save_screenshot(str(args.out / "review-sl-cai.png"))
    finally:
        driver.quit()
        server.should_exit = True
    for name in ("review-list.png", "review-pair.png", "review-sl-cai.png"):
        path = args.out / name
        _shrink(path)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
