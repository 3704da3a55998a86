"""The command line: demo in a reduced setting, report, run argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sae_lens_autointerp.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_demo_then_report(tmp_path):
    """A reduced demo: two explainers, the LLM-free scorers and the embedded judge, with controls. The embedded
    judge answers "1" to nearly everything, so the judge check must say that detection carries no signal."""
    out = tmp_path / "demo"
    demo = cli(
        "demo",
        "--n-latents",
        "2",
        "--n-tokens",
        "6000",
        "--n-explain",
        "8",
        "--n-test",
        "4",
        "--scorers",
        "embedding,detection",
        "--out",
        str(out),
        env={"SAE_AUTOINTERP_LLM_CACHE": "off"},
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "embedded default: SmolLM2-135M-Instruct" in demo.stdout
    assert "LLM usage:" in demo.stdout and "demo took" in demo.stdout
    assert "explainers compared" in demo.stdout
    assert "detection: the judge cannot tell right explanations from wrong ones" in demo.stdout
    assert "No signal: detection" in demo.stdout and "docs/llm.md" in demo.stdout
    for explainer in ("default", "top-tokens"):
        records = [json.loads(line) for line in (out / explainer / "results.jsonl").read_text().splitlines()]
        assert len(records) == 2 and not any(r.get("incomplete") for r in records)
        for r in records:
            assert set(r["scores"]) == {"embedding", "detection"}
            assert r["explanation"]["explainer"] == explainer
            if not r["explanation"]["failed"]:  # a control needs the other latent's explanation
                assert set(r["controls"]) == {"embedding", "detection"}
        html = (out / explainer / "report.html").read_text()
        assert "Judge check" in html and str(records[0]["latent"]) in html
        for r in records:  # the site: a page per latent beside the index, plotly shipped
            assert (out / explainer / "latents" / f"{r['latent'] // 1000:03d}" / f"{r['latent']}.html").is_file()
        assert (out / explainer / "assets" / "plotly.min.js").is_file()
    index = (out / "report.html").read_text()
    assert "Explainers compared" in index and "top-tokens/report.html" in index
    report = cli("report", str(out / "top-tokens"), "--html", str(tmp_path / "again.html"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert "per scorer" in report.stdout and "judge check:" in report.stdout
    assert (tmp_path / "again.html").is_file() and (tmp_path / "assets" / "index.js").is_file()
    export = cli(
        "export", str(out / "top-tokens"), "--format", "delphi", "--module", "layers.3", "--out", str(tmp_path / "d")
    )
    assert export.returncode == 0, export.stderr[-2000:]
    assert len(list((tmp_path / "d" / "explanations").glob("layers.3_latent*.txt"))) == 2
    refused = cli("export", str(out / "top-tokens"), "--format", "saebench", "--out", str(tmp_path / "s.json"))
    assert refused.returncode == 2 and "the saebench scorer did not run" in refused.stderr


def test_errors_are_one_clear_line(tmp_path):
    res = cli("run", "--latents", "99999", "--n-tokens", "256", "--out", str(tmp_path))
    assert res.returncode == 2
    assert "sae-autointerp: error: latent 99999 is out of range" in res.stderr
    assert "harvest" not in res.stderr  # refused before any harvesting
    res = cli("report", str(tmp_path / "nothing"))
    assert res.returncode == 2 and res.stderr.startswith("sae-autointerp: error: no results at")


def test_bad_run_arguments_fail_in_one_line_before_any_harvest(tmp_path):
    cases = [
        (["--latents", "abc"], "--latents 'abc': expected comma-separated indices"),
        (["--prices", "{oops"], "--prices '{oops': is not JSON"),
        (["--llm", "nosuch:model", "--latents", "1"], "unknown llm client 'nosuch'"),
        (["--scorers", "detecton", "--latents", "1"], "unknown scorer 'detecton'"),
        (["--budget-dollars", "1", "--llm", "openai:m", "--latents", "1"], "budget_dollars needs prices"),
    ]
    for extra, message in cases:
        res = cli("run", "--n-tokens", "256", "--out", str(tmp_path), *extra)
        assert res.returncode == 2, (extra, res.stderr[-1500:])
        assert res.stderr.count("\n") == 1 and message in res.stderr, (extra, res.stderr)
        assert "harvest" not in res.stderr and "Traceback" not in res.stderr


def test_offline_hub_sae_is_one_line(tmp_path):
    res = cli(
        "run",
        "--sae",
        "gpt2-small-res-jb",
        "--sae-id",
        "blocks.8.hook_resid_pre",
        "--model",
        "gpt2",
        "--out",
        str(tmp_path),
        env={"HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "could not load the SAE 'gpt2-small-res-jb / blocks.8.hook_resid_pre'" in res.stderr
    assert "sae.save_model(PATH) as --sae PATH" in res.stderr


def test_report_of_unreadable_results_is_an_error(tmp_path):
    (tmp_path / "results.jsonl").write_text("not json\n{torn")
    res = cli("report", str(tmp_path))
    assert res.returncode == 2 and "no readable result records" in res.stderr


def test_run_then_reproduce_from_its_run_json(tmp_path):
    args = [
        "--explainer",
        "top-tokens",
        "--scorers",
        "embedding",
        "--n-tokens",
        "6000",
        "--n-explain",
        "8",
        "--n-test",
        "4",
        "--n-latents",
        "3",
        "--seed",
        "7",
    ]
    first = cli("run", *args, "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-2000:]
    saved = json.loads((tmp_path / "a" / "run.json").read_text())
    assert saved["source"]["sae"] == "embedded" and saved["config"]["seed"] == 7
    assert len(saved["config"]["latents"]) == 3  # the picked latents are part of the saved config
    again = cli("run", "--config", str(tmp_path / "a"), "--out", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr[-2000:]
    redo = json.loads((tmp_path / "b" / "run.json").read_text())
    assert redo["run_key"] == saved["run_key"] and redo["config"] == {**saved["config"], "out_dir": str(tmp_path / "b")}

    def scores(folder):
        records = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
        return sorted((r["latent"], r["scores"]["embedding"]["score"]) for r in records)

    assert scores(tmp_path / "a") == scores(tmp_path / "b")


class Tripwire(AssertionError):
    """Raised where the harvest would start: everything before it was accepted."""


def _in_process(monkeypatch, capsys, bridge_model, embedded_sae, *argv: str) -> tuple[int, str]:
    """``sae-autointerp ARGV`` in this process, the session's SAE and model as the embedded ones and the harvest a
    tripwire; (exit code, stderr)."""
    import logging

    import sae_lens_autointerp.harvest as harvest_pkg
    from sae_lens_autointerp import cli as cli_module
    from sae_lens_autointerp import embedded

    def harvest(*args, **kwargs):
        raise Tripwire("the harvest started")

    monkeypatch.setattr(embedded, "load_model", lambda **kw: bridge_model)
    monkeypatch.setattr(embedded, "load_sae", lambda **kw: embedded_sae)
    monkeypatch.setattr(harvest_pkg, "harvest", harvest)
    try:
        code = cli_module.main(list(argv))
    finally:
        logger = logging.getLogger("sae_lens_autointerp")
        for handler in [h for h in logger.handlers if h.get_name() == "sae-autointerp-cli"]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    return code, capsys.readouterr().err


def _config_file(tmp_path, **changes) -> str:
    import sae_lens_autointerp as sai

    config = {**sai.RunConfig(latents=[1], llm="openai:fake-model", scorers=["detection"]).to_dict(), **changes}
    path = tmp_path / "shared-run.json"
    path.write_text(json.dumps({"format": sai.config.CONFIG_FORMAT, "config": config}))
    return str(path)


def test_a_config_files_server_gets_no_key_unless_the_user_names_it(
    monkeypatch, capsys, bridge_model, embedded_sae, tmp_path
):
    """R7: a run.json naming its own base_url is refused (the user's OPENAI_API_KEY would go there), naming the
    server and --base-url; the same server given by --base-url or OPENAI_BASE_URL is accepted."""
    import pytest

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "llm"))
    from llm_fakes import FaultServer  # FAKE server: it only counts what reaches it

    monkeypatch.setenv("OPENAI_API_KEY", "sk-USER-KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with FaultServer() as server:
        foreign = _config_file(tmp_path, llm_kwargs={"base_url": server.base_url}, out_dir=str(tmp_path / "out"))
        code, err = _in_process(monkeypatch, capsys, bridge_model, embedded_sae, "run", "--config", foreign)
        assert code == 2 and err.count("\n") == 1, err
        assert f"127.0.0.1:{server.port}/v1, a server the file names; pass --base-url URL to confirm it" in err
        for confirm in (["--base-url", server.base_url], []):
            if not confirm:
                monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
            with pytest.raises(Tripwire):  # accepted: the run goes on to the harvest
                _in_process(monkeypatch, capsys, bridge_model, embedded_sae, "run", "--config", foreign, *confirm)
        assert server.count == 0


def test_a_config_files_cluster_is_ignored_without_ray(monkeypatch, capsys, bridge_model, embedded_sae, tmp_path):
    """R7: executor / ray_address from a file apply only with --ray; without it the run is local, with a warning
    (kept, the ray:// address would be refused here: this venv has no Ray client)."""
    import pytest

    path = _config_file(
        tmp_path, executor="ray", ray_address="ray://127.0.0.1:1", workers=1, out_dir=str(tmp_path / "out")
    )
    with pytest.raises(Tripwire):
        _in_process(monkeypatch, capsys, bridge_model, embedded_sae, "run", "--config", path)
    err = capsys.readouterr().err  # the tripwire left the captured stderr unread
    assert "asks for executor='ray' at ray_address='ray://127.0.0.1:1'; ignored (this run is local)" in err
    code, err = _in_process(
        monkeypatch, capsys, bridge_model, embedded_sae, "run", "--config", path, "--ray", "ray://127.0.0.1:1"
    )
    assert code == 2 and "pip install 'ray[client]'" in err
