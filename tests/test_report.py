"""Reports of crafted results: nothing from results data runs in a browser or moves a terminal's cursor."""

from __future__ import annotations

import json

from sae_lens_autointerp.report import load, text_report, write_html

EVIL = "<script>alert(1)</script>"
ANSI = "\x1b[2J\x1b[31mred\x1b]0;title\x07"


def _crafted(folder):
    record = {
        "run_key": "k",
        "latent": 3,
        "stats": {"frequency": 0.01},
        "explanation": {"latent": 3, "text": f"months {EVIL} {ANSI}", "explainer": "x", "failed": False},
        "scores": {
            "<img src=x onerror=alert(2)>": {
                "score": 0.7,
                "low": 0.5,
                "high": 0.9,
                "metric": "auc",
                "chance": 0.5,
                "n_examples": 10,
                "n_failed": 0,
                "error": None,
            },
            "detection": {"score": None, "n_examples": 0, "n_failed": 0, "error": f"crashed: {EVIL}"},
        },
        "controls": {},
    }
    skipped = {"run_key": "k", "latent": 4, "skipped": f"dead {EVIL}", "stats": {}}
    (folder / "results.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(skipped) + "\n")
    (folder / "run.json").write_text(json.dumps({"run_key": "k"}))


def test_html_escapes_every_field(tmp_path):
    _crafted(tmp_path)
    index = write_html(load(tmp_path), tmp_path / "report.html")
    page = (tmp_path / "latents" / "000" / "3.html").read_text()
    for text in (index.read_text(), page):
        assert "<script>alert" not in text and "<img" not in text  # (plotly's own figure scripts are <script>)
    assert "&lt;img src=x onerror=alert(2)&gt;" in index.read_text()  # the scorer's name in the summary
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page


def test_terminal_report_strips_escape_sequences(tmp_path):
    _crafted(tmp_path)
    text = text_report(load(tmp_path))
    assert "\x1b" not in text and "\x07" not in text
    assert "months" in text and "red" in text
