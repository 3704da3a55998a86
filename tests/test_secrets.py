"""Planted secrets never reach the disk or the terminal: an API key, a secret header, a password and a query
token in the base URL (``llm_kwargs``), a password in the CLI's ``--base-url`` and the environment's key go
through a real run, the CLI, ``report`` (text and site) and every ``export`` format; then every file written and
everything printed or logged is searched for each. Reproducing from run.json sends no redaction marker: the key
comes from the environment. The server is the labelled FAKE of tests/llm/llm_fakes.py on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import sys
from pathlib import Path

import pytest

import sae_lens_autointerp.harvest as harvest_pkg
from sae_lens_autointerp import cli, embedded
from sae_lens_autointerp.config import REDACTED_KEY

sys.path.insert(0, str(Path(__file__).resolve().parent / "llm"))
from llm_fakes import FaultServer  # noqa: E402  (FAKE server, fault injection only)

KEY, HEADER, PASSWORD, QUERY = "sk-PLANTED-KEY-1", "HDR-PLANTED-2", "PASSW0RD-PLANTED-3", "QTOKEN-PLANTED-4"
CLI_PASSWORD, ENV_KEY = "CLIPASS-PLANTED-5", "sk-ENV-PLANTED-6"
SECRETS = (KEY, HEADER, PASSWORD, QUERY, CLI_PASSWORD, ENV_KEY)
SAMPLING = ["--n-explain", "8", "--n-test", "4"]


@pytest.fixture(scope="module")
def small_store(bridge_model, embedded_sae, tmp_path_factory):
    """The shipped SAE on 4k tokens of the embedded corpus (a few seconds)."""
    return embedded_sae.autointerp.harvest(
        bridge_model,
        embedded.load_corpus(),
        n_tokens=4096,
        ctx_len=128,
        store_dir=tmp_path_factory.mktemp("small"),
        progress=False,
    )


def run_cli(capsys, printed: list[str], *argv: str) -> int:
    """``sae-autointerp ARGV`` in this process; what it printed is added to ``printed``."""
    try:
        code = cli.main(list(argv))
    finally:
        logger = logging.getLogger("sae_lens_autointerp")
        for handler in [h for h in logger.handlers if h.get_name() == "sae-autointerp-cli"]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    out, err = capsys.readouterr()
    printed += [out, err]
    return code


def test_no_planted_secret_is_written_printed_or_sent_as_a_marker(
    monkeypatch, capsys, caplog, tmp_path, bridge_model, embedded_sae, small_store
):
    monkeypatch.setenv("SAE_AUTOINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SAE_AUTOINTERP_LLM_CACHE", "readwrite")
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    # the CLI loads the embedded SAE / model and harvests: here the session's objects and the small store
    monkeypatch.setattr(embedded, "load_model", lambda **kw: bridge_model)
    monkeypatch.setattr(embedded, "load_sae", lambda **kw: embedded_sae)
    monkeypatch.setattr(harvest_pkg, "harvest", lambda *a, **kw: small_store)
    # the package's logs, the openai SDK's and the transport's at DEBUG (httpx logs every request's URL at INFO,
    # a program may turn that on: its URL user info and query values are hidden by the client's log filter)
    caplog.set_level(logging.DEBUG, logger="sae_lens_autointerp")
    caplog.set_level(logging.DEBUG, logger="openai")
    caplog.set_level(logging.DEBUG, logger="httpx")
    caplog.set_level(logging.DEBUG, logger="httpcore")
    printed: list[str] = []
    latents = cli.pick_latents(small_store, 3, min_examples=12)
    explanations = {i: "words" for i in latents}
    with FaultServer(reply="1") as server:
        host = f"127.0.0.1:{server.port}"
        api = embedded_sae.autointerp.run(
            bridge_model,
            store=small_store,
            explanations=explanations,
            llm="openai:fake-model",
            scorers=["detection"],
            sampling={"n_explain": 8, "n_test_pos": 4, "n_test_neg": 4},
            out_dir=tmp_path / "api",
            progress=False,
            llm_kwargs={
                "api_key": KEY,
                "default_headers": {"X-Api-Key": HEADER},
                "base_url": f"http://user:{PASSWORD}@{host}/v1?token={QUERY}",
                "cache": str(tmp_path / "llm-cache"),
            },
        )
        assert api.complete and api.table["score"].notna().sum() >= 2 and server.count > 0
        basic = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()  # httpx: the URL's userinfo
        assert server.headers[0]["authorization"] in (f"Bearer {KEY}", basic)  # the secrets were used
        assert server.headers[0]["x-api-key"] == HEADER
        saved = json.loads((tmp_path / "api" / "run.json").read_text())["config"]["llm_kwargs"]
        assert saved["api_key"] == REDACTED_KEY and saved["default_headers"] == {"X-Api-Key": "<redacted>"}
        assert saved["base_url"] == f"http://REDACTED@{host}/v1?token=REDACTED"

        cli_args = ["--llm", "openai:fake-model", "--scorers", "detection", *SAMPLING]
        cli_args += ["--explanations", json.dumps(explanations), "--base-url", f"http://user:{CLI_PASSWORD}@{host}/v1"]
        assert run_cli(capsys, printed, "-vv", "run", *cli_args, "--out", str(tmp_path / "cli")) == 0, printed[-1]

        # reproduce the API run from its run.json (a fresh response cache, so requests are sent); the header's
        # value is not on disk, so it is given again (a header may route answers: it is part of the run's identity)
        before = server.count
        again = ["--config", str(tmp_path / "api"), "--base-url", f"http://{host}/v1", "--out", str(tmp_path / "again")]
        reproduce = {"cache": str(tmp_path / "llm-cache-2"), "default_headers": {"X-Api-Key": HEADER}}
        again += ["--llm-kwargs", json.dumps(reproduce)]
        assert run_cli(capsys, printed, "run", *again) == 0, printed[-1]
        sent = server.headers[before:]
        assert sent and all(h["authorization"] == f"Bearer {ENV_KEY}" for h in sent)
        assert not any("redacted" in v.lower() for h in sent for v in h.values())
        assert all(h["x-api-key"] == HEADER for h in sent)
        run_key = json.loads((tmp_path / "again" / "run.json").read_text())["run_key"]
        assert run_key == api.run_key  # the run's identity holds no secret, so the reproduction is the same run

    for run in ("api", "cli"):
        folder = str(tmp_path / run)
        assert run_cli(capsys, printed, "report", folder, "--html", str(tmp_path / f"site-{run}")) == 0, printed[-1]
        exports = [
            ["--format", "delphi", "--module", "layers.3", "--out", str(tmp_path / f"delphi-{run}")],
            ["--format", "saebench", "--scorer", "detection", "--out", str(tmp_path / f"saebench-{run}.json")],
            ["--format", "neuronpedia", "--neuronpedia-id", "m/s", "--explanation-model", "m"]
            + ["--out", str(tmp_path / f"np-{run}")],
        ]
        for export in exports:
            assert run_cli(capsys, printed, "export", folder, *export) == 0, printed[-1]

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 20 and (tmp_path / "cache").is_dir() and (tmp_path / "llm-cache").is_dir()
    texts = {str(p.relative_to(tmp_path)): p.read_bytes().decode("utf-8", "replace") for p in files}
    texts.update(printed=json.dumps(printed), logs=caplog.text)
    found = {secret: sorted(name for name, text in texts.items() if secret in text) for secret in SECRETS}
    assert found == {secret: [] for secret in SECRETS}
