"""The command line: demo in a reduced setting, report, run argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sae_lens_autointerp.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_demo_then_report(tmp_path):
    out = tmp_path / "demo"
    demo = cli("demo", "--n-latents", "1", "--n-tokens", "6000", "--n-explain", "8", "--n-test", "4",
               "--scorers", "detection,fuzzing", "--out", str(out), env={"SAE_AUTOINTERP_LLM_CACHE": "off"})
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "embedded default: SmolLM2-135M-Instruct" in demo.stdout
    assert "detection" in demo.stdout and "LLM usage:" in demo.stdout and "demo took" in demo.stdout
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and set(records[0]["scores"]) == {"detection", "fuzzing"} or records[0].get("skipped")
    html = (out / "report.html").read_text()
    assert "<table>" in html and str(records[0]["latent"]) in html
    report = cli("report", str(out), "--html", str(tmp_path / "again.html"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert "per scorer" in report.stdout or "skipped" in report.stdout
    assert (tmp_path / "again.html").is_file()


def test_errors_are_one_clear_line(tmp_path):
    res = cli("run", "--latents", "99999", "--n-tokens", "256", "--out", str(tmp_path))
    assert res.returncode == 2
    assert "sae-autointerp: error: latent 99999 is out of range" in res.stderr
    assert "harvest" not in res.stderr  # refused before any harvesting
    res = cli("report", str(tmp_path / "nothing"))
    assert res.returncode == 2 and res.stderr.startswith("sae-autointerp: error: no results at")
