"""The page at `/` (medsweep/serving/page.py) in a real headless browser: Debian's chromium driven
by Selenium through Debian's chromedriver, against a real uvicorn on 127.0.0.1 serving a real
promoted tiny model. The clinician's path: type the token, paste a note, see a label and the
probability bars (and the words that drove it), mark the answer wrong with the right label and a
comment; the row lands in the SQLite feedback database. Without a browser: the page has no inline
script and a strict CSP, and the API calls it makes are refused without the token."""

import logging
import re
import shutil
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from medsweep.serving import serve
from medsweep.serving.inference import load_promoted
from tests.conftest import serving, tiny_checkpoints

TOKEN = "page-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOTE = ("Patient with a history of hypertension presents with crushing chest pain radiating to the left arm; "
        "troponin elevated, ST elevation in the inferior leads.")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A real promotion of a real tiny trial (it has decision.json: prediction sets)."""
    from medsweep.promotion.release import promote_checkpoint

    base = tmp_path_factory.mktemp("page")
    kept, _ = tiny_checkpoints(base)[-1]
    return promote_checkpoint(kept, base / "run")


class Scripts(HTMLParser):
    """Every <script>'s attributes and body, and every inline handler or style attribute."""

    def __init__(self):
        super().__init__()
        self.scripts, self.inline, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.inline += [f"{tag} {name}" for name in attrs if name.startswith("on") or name == "style"]
        if tag == "script":
            self._open = {"attrs": attrs, "body": ""}
            self.scripts.append(self._open)

    def handle_data(self, data):
        if self._open is not None:
            self._open["body"] += data

    def handle_endtag(self, tag):
        if tag == "script":
            self._open = None


def test_the_page_has_no_inline_script_and_its_api_calls_need_the_token(promoted, tmp_path):
    model = load_promoted(promoted)
    with serving(serve.create_app(model, TOKEN, feedback_db=str(tmp_path / "fb.sqlite"))) as url:
        page = httpx.get(f"{url}/")  # the page itself is public: it holds no data
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        parsed = Scripts()
        parsed.feed(page.text)
        assert parsed.scripts and all(s["attrs"].get("src", "").startswith("/static/") and not s["body"].strip()
                                      for s in parsed.scripts), parsed.scripts
        assert parsed.inline == []
        script = httpx.get(f"{url}/static/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert ".innerHTML" not in script.text and "eval(" not in script.text
        assert httpx.get(f"{url}/static/style.css").headers["content-type"].startswith("text/css")
        assert httpx.get(f"{url}/static/..%2Fpage.py").status_code == 404
        assert httpx.get(f"{url}/static/index.css").status_code == 404

        # Every API call the page makes: refused without the token, or with a wrong one.
        for path, body in (("/predict", {"texts": [NOTE]}), ("/explain", {"text": NOTE}),
                           ("/feedback", {"prediction_id": "x", "label": model.label_names[0]})):
            assert httpx.post(f"{url}{path}", json=body).status_code == 401, path
            assert httpx.post(f"{url}{path}", json=body, headers={"Authorization": "Bearer wrong-token-0123456789"}
                              ).status_code == 401, path
        explained = httpx.post(f"{url}/explain", json={"text": NOTE}, headers=AUTH, timeout=60)
        assert explained.status_code == 200, explained.text
        words = explained.json()["words"]
        assert words and all(NOTE[w["start"]:w["end"]] == w["word"] for w in words)
        assert httpx.post(f"{url}/explain", json={"text": "  "}, headers=AUTH).json()["detail"] == "text is empty"


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_a_clinician_classifies_a_note_and_marks_it_wrong_in_a_real_browser(promoted, tmp_path, caplog, capsys):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    db = tmp_path / "fb.sqlite"
    model = load_promoted(promoted)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No background networking or updates (the machine is offline), and a fresh profile.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1700"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Everything the service logs (Selenium's own debug log quotes the keys it types: left out).
    caplog.set_level(logging.DEBUG)
    for chatty in ("selenium", "urllib3"):
        caplog.set_level(logging.WARNING, logger=chatty)
    with serving(serve.create_app(model, TOKEN, feedback_db=str(db))) as url:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            wait = WebDriverWait(driver, 60)
            driver.get(f"{url}/")
            wait.until(lambda d: "v001" in d.find_element(By.ID, "model").text)
            driver.find_element(By.ID, "token").send_keys(TOKEN)
            driver.find_element(By.ID, "save-token").click()
            assert driver.execute_script("return sessionStorage.getItem('medsweep-token')") == TOKEN
            assert driver.execute_script("return localStorage.length + document.cookie.length") == 0
            driver.find_element(By.ID, "note").send_keys(NOTE)
            driver.find_element(By.ID, "classify").click()

            wait.until(EC.visibility_of_element_located((By.ID, "result")))
            label = driver.find_element(By.ID, "label").text
            assert label in model.label_names  # no refer_when: the answer is a label
            bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
            names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#bars .bar-name")]
            assert sorted(names) == sorted(model.label_names) and names[0] == label
            widths = [b.size["width"] for b in bars]  # rendered, so the CSP let the script size them
            assert all(w > 0 for w in widths) and widths == sorted(widths, reverse=True)
            assert "Prediction set" in driver.find_element(By.ID, "set").text  # the folder has decision.json
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#words span"))
            words = driver.find_element(By.ID, "words").text
            assert words.startswith("Patient with a history of hypertension")

            right = next(n for n in model.label_names if n != label)
            Select(driver.find_element(By.ID, "right-label")).select_by_value(right)
            driver.find_element(By.ID, "comment").send_keys("inferior STEMI, cardiology")
            driver.find_element(By.ID, "wrong").click()
            wait.until(lambda d: "saved" in d.find_element(By.ID, "feedback-status").text)
            assert "wrong, right label " + right in driver.find_element(By.ID, "feedback-status").text

            shot = tmp_path / "page.png"
            driver.save_screenshot(str(shot))
            with capsys.disabled():
                print(f"\npage screenshot: {shot}")
            problems = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert problems == [], problems  # no CSP violation, no failed request, no script error
        finally:
            driver.quit()

    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT model_version, predicted_label, right_label, agrees, comment, text "
                                  "FROM feedback").fetchall()
    assert rows == [("v001", label, right, 0, "inferior STEMI, cardiology", NOTE)]
    assert Path(shot).stat().st_size > 10_000
    assert "hypertension" not in caplog.text and "STEMI" not in caplog.text  # no note text in the logs
