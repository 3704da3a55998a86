"""The static site (report/site.py, report/card.py): structure, content, escaping, the notebook card, and a
real-browser test in Debian's Chromium (driven by Selenium through the system chromedriver).

The run: the planted SAE (latents that fire exactly on known tokens) scored by detection and fuzzing with
the FAKE answer-key judge (tests/answer_key.py, wrong with probability 0.15 so that some answers are wrong)
and by the real MiniLM embedding scorer, on the real embedded SmolLM2."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from answer_key import AnswerKey, AnswerKeyClient
from sae_lens_autointerp.report import load, write_site
from sae_lens_autointerp.report.site import latent_href
from sae_lens_autointerp.sampling import SamplingConfig

EVIL = "<script>alert(1)</script>"
EVIL_ATTR = '"><img src=x onerror=alert(2)>'
SCORERS = ["detection", "fuzzing", "embedding"]


@pytest.fixture(scope="module")
def site(planted, planted_store, bridge_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("site-run")
    client = AnswerKeyClient(AnswerKey(planted, planted_store, bridge_model), eps=0.15)
    result = planted.sae.score(
        bridge_model,
        store=planted_store,
        explanations=planted.explanations,
        scorers=SCORERS,
        llm=client,
        sampling=SamplingConfig(n_explain=10, n_test_pos=10, n_test_neg=10),
        out_dir=out / "run",
        progress=False,
    )
    index = result.to_html(out / "site")
    return result, index


def _data(index: Path) -> dict:
    text = index.read_text(encoding="utf-8")
    blob = re.search(r"<script id='data' type='application/json'>(.*?)</script>", text, re.S)
    assert blob is not None
    return json.loads(blob.group(1))


def test_site_is_self_contained_and_complete(site):
    result, index = site
    root = index.parent
    for name in ("plotly.min.js", "site.css", "index.js"):
        assert (root / "assets" / name).stat().st_size > 1000
    pages = sorted(root.glob("latents/*/*.html"))
    assert len(pages) == len(result.records)
    for page in [index, *pages]:
        text = page.read_text(encoding="utf-8")
        # nothing is fetched from the network: every script and style is a relative file
        assert not re.search(r"""(src|href)=['"]?(https?:)?//""", text), page
        for ref in re.findall(r"""(?:src|href)='([^'#]+)'""", text):
            assert (page.parent / ref).resolve().is_file(), (page, ref)
    rows = _data(index)["rows"]
    assert sorted(r["l"] for r in rows) == sorted(int(r["latent"]) for r in result.records)
    table = result.table
    for row in rows:
        for scorer, score in row["s"].items():
            want = table[(table["latent"] == row["l"]) & (table["scorer"] == scorer)]["score"].iloc[0]
            assert score == pytest.approx(want)
        assert row["h"] == latent_href(row["l"])


def test_latent_page_shows_examples_answers_and_decoder_views(site):
    result, index = site
    record = next(
        r for r in result.records if any(p["prediction"] != p["label"] for p in r["scores"]["detection"]["predictions"])
    )
    latent = int(record["latent"])
    page = (index.parent / latent_href(latent)).read_text(encoding="utf-8")
    assert record["explanation"]["text"] in page
    for scorer in SCORERS:
        assert f"<td>{scorer}</td>" in page
    assert "Activation distribution" in page and "Quantile 1 (of 10" in page
    assert len(re.findall(r'<span(?: class="pk")? style="--a:', page)) > 20  # coloured tokens
    assert page.count('class="pk"') >= 10  # every example's peak is marked
    preds = record["scores"]["detection"]["predictions"]
    wrong = sum(p["prediction"] != p["label"] for p in preds)
    assert f"{wrong} of {len(preds)} answered wrong" in page
    section = page.split("Test examples: detection", 1)[1]
    rows = re.findall(r"<div class='exrow (ok|wrong)'>", section.split("<h3>", 1)[0])
    assert rows == ["wrong"] * wrong + ["ok"] * (len(preds) - wrong)  # wrong answers first
    assert "(window not in the store)" not in section.split("<h3>", 1)[0]
    assert "promotes" in page and "suppresses" in page
    assert "Neighbouring latents (decoder cosine)" in page


def test_notebook_card_and_plot(site):
    result, _ = site
    latent = int(result.records[0]["latent"])
    card = result.show(latent)
    html = card._repr_html_()
    assert f"Latent {latent}" in html and "<style>" in html
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js inlined: renders offline
    fig = result.plot()
    names = {t.name for t in fig.data}
    assert {"score", "control (another latent's explanation)"} <= names
    assert sum(t.type == "histogram" and t.name == "score" for t in fig.data) == len(SCORERS)
    with pytest.raises(Exception, match="not in this result"):
        result.show(10_000)


def test_pages_subset_and_a_missing_store(site, tmp_path):
    result, index = site
    run = Path(result.path).parent
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "run.json").read_text())
    meta["store_path"], meta["store"] = str(tmp_path / "gone"), "0" * 64
    (copy / "run.json").write_text(json.dumps(meta))
    first = int(result.records[0]["latent"])
    out = write_site(load(copy), tmp_path / "site", pages=[first])
    assert [p.name for p in (tmp_path / "site").glob("latents/*/*.html")] == [f"{first}.html"]
    rows = {r["l"]: r for r in _data(out)["rows"]}
    assert rows[first]["h"] and all(r["h"] is None for k, r in rows.items() if k != first)
    page = (tmp_path / "site" / latent_href(first)).read_text()
    assert "is gone" in page and "<td>detection</td>" in page  # scores still shown, the gap named


def _evil_run(folder: Path) -> None:
    record = {
        "run_key": "k",
        "latent": 3,
        "stats": {"frequency": 0.01, "max_activation": 2.0},
        "explanation": {"latent": 3, "text": f"months {EVIL} {EVIL_ATTR}", "explainer": "x", "failed": False},
        "scores": {
            EVIL_ATTR: {"score": 0.7, "low": 0.5, "high": 0.9, "metric": "auc", "chance": 0.5, "n_examples": 10},
            "detection": {"score": None, "n_examples": 0, "n_failed": 0, "error": f"crashed: {EVIL}"},
        },
        "controls": {},
    }
    skipped = {"run_key": "k", "latent": 4, "skipped": f"dead {EVIL}", "stats": {}}
    (folder / "results.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(skipped) + "\n")
    (folder / "run.json").write_text(json.dumps({"run_key": "k", "explainer": EVIL}))
    pieces = [EVIL, EVIL_ATTR, "ok"]
    (folder / "vocab.json").write_text(json.dumps({"pieces": pieces, "special": []}))
    (folder / "decoder.json").write_text(
        json.dumps({"latents": {"3": {"promoted": [[0, 1.0]], "suppressed": [[1, -1.0]], "neighbours": [[4, 0.5]]}}})
    )


def test_results_text_renders_as_text(tmp_path):
    _evil_run(tmp_path)
    index = write_site(load(tmp_path), tmp_path / "site")
    for page in [index, *(tmp_path / "site").glob("latents/*/*.html")]:
        text = page.read_text()
        assert "<script>alert" not in text and "<img" not in text, page
        assert "onerror=alert(2)>" not in text.replace("&gt;", "")  # no attribute break-out either
    card = (tmp_path / "site" / latent_href(3)).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in card and "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in card
    assert "\\u003cscript\\u003ealert(1)" in index.read_text()  # the index's data: inert JSON


# ------------------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def browser():
    from sae_lens_autointerp.report.browser import chromium_driver, chromium_paths

    if not all(chromium_paths()):
        reason = "Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt)"
        print(f"SKIPPED real-browser tests: {reason}")
        pytest.skip(reason)
    driver = chromium_driver()
    yield driver
    driver.quit()


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _first_column(driver, col: int) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        row.find_elements(By.TAG_NAME, "td")[col].text
        for row in driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
    ]


def test_in_chromium_index_sorts_searches_and_latent_page_colours_tokens(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    result, index = site
    browser.get(index.as_uri())
    assert _errors(browser) == []
    rows = browser.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
    assert len(rows) == len(result.records)
    assert browser.find_elements(By.CSS_SELECTOR, "#dist .plot-container"), "score distributions not drawn"
    assert browser.find_elements(By.CSS_SELECTOR, "#agree .plot-container"), "agreement matrix not drawn"
    assert browser.find_elements(By.CSS_SELECTOR, "#scatter .plot-container"), "scatter not drawn"
    browser.save_screenshot(str(tmp_path / "index.png"))

    headers = browser.find_elements(By.CSS_SELECTOR, "#latents thead th")
    col = [h.text for h in headers].index("embedding")
    table = result.table[result.table["scorer"] == "embedding"]
    by_score = [
        str(int(r.latent)) for r in table.sort_values(["score", "latent"], ascending=[False, True]).itertuples()
    ]
    headers[col].click()  # numbers sort largest first
    values = [float(v) for v in _first_column(browser, col) if v != "–"]
    assert values == sorted(values, reverse=True) and len(values) == len(result.records)
    assert _first_column(browser, 0) == by_score  # the rows move with their scores
    headers[col].click()
    assert [float(v) for v in _first_column(browser, col)] == sorted(values)
    headers[0].click()
    headers[0].click()  # the latent column, descending
    assert _first_column(browser, 0) == sorted(_first_column(browser, 0), key=int, reverse=True)

    target = result.records[1]
    search = browser.find_element(By.ID, "q")
    search.send_keys(target["explanation"]["text"])
    shown = _first_column(browser, 0)
    assert str(target["latent"]) in shown and len(shown) < len(result.records)
    assert browser.find_element(By.ID, "count").text.startswith(f"{len(shown)} of {len(result.records)}")
    search.clear()
    search.send_keys("no explanation says this")
    assert _first_column(browser, 0) == []

    latent = int(result.records[0]["latent"])
    browser.get((index.parent / latent_href(latent)).as_uri())
    assert _errors(browser) == []
    spans = browser.find_elements(By.CSS_SELECTOR, ".ex span[title]")
    assert len(spans) > 20
    for span in spans[:30]:
        colour = span.value_of_css_property("background-color")
        alpha = float(re.findall(r"[\d.]+", colour)[3]) if colour.startswith("rgba") else 1.0
        assert colour != "rgba(0, 0, 0, 0)" and alpha > 0, colour
        assert float(span.get_attribute("title")) > 0  # hover shows the activation
    plain = browser.find_elements(By.CSS_SELECTOR, ".ex span:not([title])")
    assert plain and plain[0].value_of_css_property("background-color") == "rgba(0, 0, 0, 0)"
    assert browser.find_elements(By.CSS_SELECTOR, f"#scores-{latent} .plot-container")
    browser.save_screenshot(str(tmp_path / "latent.png"))
    assert (tmp_path / "index.png").stat().st_size > 10_000 and (tmp_path / "latent.png").stat().st_size > 10_000


def test_in_chromium_hostile_text_stays_text(browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _evil_run(tmp_path)
    index = write_site(load(tmp_path), tmp_path / "site")
    for url in (index.as_uri(), (tmp_path / "site" / latent_href(3)).as_uri()):
        browser.get(url)
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 (an alert would mean the text ran)
        assert not browser.find_elements(By.CSS_SELECTOR, "img")
        assert _errors(browser) == []
    browser.get(index.as_uri())

    def evil_cell_shown(driver) -> bool:
        cells = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#latents td.ex")]
        return any(EVIL in c and EVIL_ATTR in c for c in cells)

    # The table's rows are drawn by script after the load event: on a loaded machine that takes a while.
    WebDriverWait(browser, 20).until(evil_cell_shown)


def test_a_run_view_nested_past_the_parsers_depth_is_left_out(tmp_path, caplog):
    from sae_lens_autointerp.lens import read_run_view

    (tmp_path / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "vocab.json").write_bytes(b"\xff\xfe{")
    assert read_run_view(tmp_path, "run.json") is None
    assert read_run_view(tmp_path, "vocab.json") is None
    assert "run.json is unreadable" in caplog.text
