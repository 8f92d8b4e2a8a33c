"""`rlaif review` end to end in headless Chromium: the real command serves the fixture folder, a
person filters, opens a pair, labels three rows with the keyboard and watches the agreement move;
the labels are in the SQLite file, export to a gold file, and `rlaif eval labeler` reads it."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rlaif.cli import main

from ..conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_review(folder: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """``rlaif review FOLDER`` in a subprocess; returns it and the address it printed, once the
    page answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlaif", "review", str(folder), "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    url = None
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith("open "):
            url = line.split()[1]
            break
    if url is None:
        proc.kill()
        raise AssertionError(f"rlaif review did not start: {proc.stdout.read()}")  # type: ignore[union-attr]
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("rlaif review never answered")


def chrome(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make chromium)")
@pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver is not installed (make chromium)")
def test_label_three_pairs_with_the_keyboard_then_export_and_eval(
    out_dir, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e .[dev])")
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    before = {p: p.read_bytes() for p in out_dir.rglob("*.jsonl")}
    proc, url = start_review(out_dir)
    driver = chrome(tmp_path)
    try:
        # the page re-renders after each answer: an element found before may be gone
        wait = WebDriverWait(
            driver, 15, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
        )
        driver.get(url)
        name = wait.until(lambda d: d.find_element(By.ID, "name-input"))
        wait.until(lambda d: name.is_displayed())
        name.send_keys("ann", Keys.ENTER)
        wait.until(lambda d: "rows shown" in d.find_element(By.ID, "count").text)
        assert "no labels yet" in driver.find_element(By.ID, "agreement").text

        Select(driver.find_element(By.ID, "f-principle")).select_by_value("crime-illegal")
        wait.until(lambda d: d.find_element(By.ID, "count").text.startswith("4 rows shown"))
        ids = [
            tr.get_attribute("data-id")
            for tr in driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr")
        ]
        assert ids == ["p1", "q1/0-1", "q6/0-1", "q9/0-1"]

        driver.find_element(By.CSS_SELECTOR, 'tr[data-id="q1/0-1"]').click()
        wait.until(lambda d: d.find_element(By.ID, "response-a").is_displayed())
        assert "locksmith" in driver.find_element(By.ID, "response-a").text
        assert "tension wrench" in driver.find_element(By.ID, "response-b").text
        # the AI's label is not on the page before the person answers
        assert "hidden until you answer" in driver.find_element(By.ID, "ai").text
        assert "AI:" not in driver.find_element(By.ID, "row-view").text

        body = driver.find_element(By.TAG_NAME, "body")
        counter = []
        for key, row in (("1", "q1/0-1"), ("2", "q6/0-1"), ("1", "q9/0-1")):
            wait.until(
                lambda d, row=row: (
                    f"· {row}" in d.find_element(By.CSS_SELECTOR, "#row-view h2").text
                )
            )
            wait.until(lambda d: "hidden" in d.find_element(By.ID, "ai").text)
            body.send_keys(key)
            wait.until(lambda d: "AI:" in d.find_element(By.ID, "ai").text)
            n = len(counter) + 1
            wait.until(lambda d, n=n: f"n={n}" in d.find_element(By.ID, "agreement").text)
            counter.append(driver.find_element(By.ID, "agreement").text)
            body.send_keys("j")
        # q1 and q9: the AI chose A, like the person; q6: the AI chose A, the person B
        assert counter[0].startswith("human–AI agreement: 100%") and "n=1" in counter[0]
        assert counter[1].startswith("human–AI agreement: 50%") and "n=2" in counter[1]
        assert counter[2].startswith("human–AI agreement: 67%") and "n=3" in counter[2]
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=10)

    db = sqlite3.connect(out_dir / "review.sqlite")
    stored = db.execute(
        "SELECT row_id, question, answer, labeler FROM labels ORDER BY seq"
    ).fetchall()
    db.close()
    assert stored == [("q1/0-1", "pair", "a", "ann"), ("q6/0-1", "pair", "b", "ann"),
                      ("q9/0-1", "pair", "a", "ann")]  # fmt: skip
    assert {p: p.read_bytes() for p in out_dir.rglob("*.jsonl")} == before  # datasets untouched

    gold = tmp_path / "gold.jsonl"
    assert main(["review", "export", str(out_dir), "--gold", str(gold)]) == 0
    assert "wrote 3 gold rows" in capsys.readouterr().out

    import rlaif.cli.eval as cli_eval
    from rlaif.eval.labeler import run_labeler_eval

    from ..conftest import FakeLabeler
    from ..eval.test_labeler import prior_towards_a

    async def scripted(cfg, on_row=None, on_start=None):
        return await run_labeler_eval(cfg, on_row, on_start, FakeLabeler(logprobs=prior_towards_a))

    monkeypatch.setattr(cli_eval, "run_labeler_eval", scripted)
    ev = tmp_path / "ev"
    assert main(["eval", "labeler", "--gold", str(gold), "--out", str(ev)]) == 0
    saved = json.loads((ev / "labeler_eval.json").read_text())
    assert saved["metrics"]["scored"] == 3
