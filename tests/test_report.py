"""Reports of crafted results: nothing from results data runs in a browser or moves a terminal's cursor."""

from __future__ import annotations

import json

import pytest

from sae_lens_autointerp.report import load, text_report, usage_line, write_html
from sae_lens_autointerp.report.site import latent_href
from sae_lens_autointerp.results import ScoreResult

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


# ----------------------------------------------------------------------------- hostile and malformed records
# every escape a results line can carry: CSI, OSC (title, hyperlink), BEL, NUL, C1 and the bidi controls
HOSTILE = (
    "\x1b[2J\x1b[31mRED\x1b[0m\x1b]0;pwned-title\x07\x1b]8;;http://evil.example\x07link\x1b]8;;\x07"
    "\u202eevil\x00nul\x9b\u2066iso\u2069\u202a"
)
FORBIDDEN = ["\x1b", "\x00", "\x07", "\x9b", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))]


def _record(latent: int, **score) -> dict:
    return {
        "run_key": "k",
        "latent": latent,
        "stats": {"frequency": 0.01, "max_activation": 2.0},
        "explanation": {"latent": latent, "text": "months", "explainer": "x", "failed": False},
        "scores": {
            "detection": {
                "score": 0.7,
                "low": 0.5,
                "high": 0.9,
                "metric": "balanced_accuracy",
                "chance": 0.5,
                "n_examples": 10,
                "n_failed": 0,
                "error": None,
                "predictions": [{"prediction": True, "label": True, "probability": 0.9, "token_id": 5}],
                **score,
            }
        },
        "controls": {},
        "usage": {"explain": {"requests": 1, "total_tokens": 5, "cost": 0.1}},
    }


def _folder(folder, records, total=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "run.json").write_text(json.dumps({"run_key": "k"}))
    if total is not None:
        (folder / "usage.json").write_text(json.dumps({"total": total}))
    return folder


def _cli_report(folder, site, capsys) -> str:
    from sae_lens_autointerp.cli import main

    rc = main(["report", str(folder), "--html", str(site)])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


def test_report_cli_prints_no_escape_from_scorer_metric_or_any_name(tmp_path, capsys):
    """Scorer and metric names reached the terminal raw (the table's columns, the summary), and U+202E
    passed the cleaner everywhere."""
    hostile = _record(1, metric=HOSTILE)
    hostile["scores"] = {HOSTILE: hostile["scores"]["detection"]}
    hostile["explanation"]["text"] = HOSTILE
    skipped = {"run_key": "k", "latent": 3, "skipped": HOSTILE, "stats": {}}
    total = {"requests": HOSTILE, "retries": 1, "failures": 0, "cost": HOSTILE}
    folder = _folder(tmp_path / "run", [hostile, _record(2), skipped], total)
    out = _cli_report(folder, tmp_path / "site", capsys)
    for char in FORBIDDEN:
        assert char not in out, f"U+{ord(char):04X} on the terminal"
    assert out.count("REDlinkevilnuliso") >= 4  # the table's column, the summary's scorer and metric, the explanation
    assert "LLM usage: – requests (1 retries, 0 failures)" in out and "$–" in out


def _bad(field: str, value) -> tuple[dict, dict | None]:
    record, total = _record(1), None
    score = record["scores"]["detection"]
    if field == "frequency":
        record["stats"]["frequency"] = value
    elif field == "max_activation":
        record["stats"]["max_activation"] = value
    elif field == "cost":
        record["usage"]["explain"]["cost"] = value
        total = {"requests": 1, "retries": 0, "failures": 0, "cost": value}
    elif field == "probability":
        score["predictions"][0]["probability"] = value
    elif field in ("n_failed", "n_examples"):
        score[field] = value
    return record, total


# (field, value, what the latent's page shows in its place)
BAD_NUMBERS = [
    ("frequency", "abc", "frequency – ·"),
    ("frequency", 10**400, "frequency – ·"),
    ("max_activation", "abc", "max activation – ·"),
    ("cost", "abc", "<td>$–</td>"),
    ("probability", "abc", "P=–"),
    ("n_failed", "many", "<td>–</td></tr>"),
    ("n_examples", "abc", "<td>–</td><td>0</td></tr>"),
]


@pytest.mark.parametrize(("field", "value", "shown"), BAD_NUMBERS, ids=[f"{f}={v!s:.8}" for f, v, _ in BAD_NUMBERS])
def test_report_and_site_show_a_bad_number_as_a_dash(tmp_path, capsys, field, value, shown):
    """A string or an overflowing number where a record holds a number stopped `report` and the site
    (ValueError / OverflowError from float() and int())."""
    record, total = _bad(field, value)
    folder = _folder(tmp_path / "run", [record, _record(2)], total)
    out = _cli_report(folder, tmp_path / "site", capsys)
    page = (tmp_path / "site" / "latents" / "000" / "1.html").read_text(encoding="utf-8")
    assert shown in page
    if field == "cost":
        assert "$–" in out and "$–" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")


def test_a_huge_latent_number_gets_its_page(tmp_path):
    """Records in memory (``sae.score``'s, or a list passed in) with a latent past 64 bits: the site and the
    text report take it exactly (the results file's index leaves such a line out as unreadable)."""
    big = 10**30
    result = ScoreResult(records=[_record(big), _record(2)], path=_folder(tmp_path / "run", []) / "results.jsonl")
    index = write_html(result, tmp_path / "site")
    assert (tmp_path / "site" / latent_href(big)).is_file() and index.is_file()
    assert "1000000000000000000000000000000" in text_report(result)


def test_usage_line_names_attempts_retries_and_failures():
    """A run whose 10 HTTP attempts all failed read "LLM usage: 0 requests" alone."""
    total = {"requests": 0, "attempts": 10, "retries": 5, "failures": 5, "prompt_tokens": 0}
    line = usage_line({"total": {**total, "completion_tokens": 0, "cache_hits": 0, "cost": 0.0}})
    assert line == (
        "LLM usage: 0 requests (10 attempts, 5 retries, 5 failures), 0 prompt + 0 completion tokens, "
        "0 cache hits, $0.0000"
    )
    assert usage_line({"total": {"requests": 3, "retries": 0, "failures": 0}}).startswith(
        "LLM usage: 3 requests (0 retries, 0 failures), – prompt"
    )
    assert usage_line({}) is None and usage_line("garbage") is None
