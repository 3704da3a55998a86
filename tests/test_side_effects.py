"""A library call changes nothing process-wide that the caller did not ask for.

* ``import sae_lens_autointerp`` (in a fresh interpreter) leaves logging, warnings filters, the environment,
  the exception hooks, torch's thread counts and global flags, signal handlers and the allocator alone;
* ``harvest()`` pins glibc's malloc thresholds only when asked (``pin_malloc=True`` or
  ``SAE_AUTOINTERP_PIN_MALLOC=1``); the ``sae-autointerp`` command does not either (it slows every forward pass);
* the CLI's ``--version``, ``-v`` and ``-q`` set what they say;
* ``ActivationStore`` still works under its old name, with a DeprecationWarning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A spy on ctypes.CDLL (how the library reaches mallopt), installed before anything is imported.
CDLL_SPY = """
import ctypes
CALLS = []
_real_cdll = ctypes.CDLL
class _Spy:
    def __init__(self, name, *args, **kwargs):
        CALLS.append(str(name))
        self._lib = _real_cdll(name, *args, **kwargs)
    def __getattr__(self, attr):
        CALLS.append(attr)
        return getattr(self._lib, attr)
ctypes.CDLL = _Spy
"""

SNAPSHOT = (
    CDLL_SPY
    + """
import faulthandler, gc, json, locale, logging, os, signal, socket, sys, threading, warnings

# The dependencies' own import-time effects are theirs (a user imports sae_lens to have an SAE at all):
# measured after them, so what changes is what this package's import does.
import torch
import sae_lens

def loggers():
    out = {}
    for name, lg in [("", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]:
        if isinstance(lg, logging.Logger):
            out[name] = {"level": lg.level, "handlers": [repr(h) for h in lg.handlers],
                         "propagate": lg.propagate, "disabled": lg.disabled}
    return out

def snapshot():
    return {
        "loggers": loggers(), "logging.disable": logging.root.manager.disable,
        "warnings.filters": [repr(f) for f in warnings.filters], "os.environ": dict(os.environ),
        "sys.excepthook": repr(sys.excepthook), "sys.unraisablehook": repr(sys.unraisablehook),
        "threading.excepthook": repr(threading.excepthook), "sys.displayhook": repr(sys.displayhook),
        "torch.get_num_threads": torch.get_num_threads(), "torch.get_num_interop_threads": torch.get_num_interop_threads(),
        "torch.get_default_dtype": str(torch.get_default_dtype()), "torch.is_grad_enabled": torch.is_grad_enabled(),
        "torch.deterministic": torch.are_deterministic_algorithms_enabled(),
        "signals": {s: repr(signal.getsignal(getattr(signal, s))) for s in ("SIGINT", "SIGTERM", "SIGPIPE", "SIGCHLD")},
        "sys.getrecursionlimit": sys.getrecursionlimit(), "sys.getswitchinterval": sys.getswitchinterval(),
        "os.getcwd": os.getcwd(), "faulthandler": faulthandler.is_enabled(), "gc": [gc.isenabled(), gc.get_threshold()],
        "locale": locale.setlocale(locale.LC_ALL, None), "socket.getdefaulttimeout": socket.getdefaulttimeout(),
        "stdio": [id(sys.stdin), id(sys.stdout), id(sys.stderr)],
        "threads": sorted(t.name for t in threading.enumerate()),
    }

before = snapshot()
CALLS.clear()
import sae_lens_autointerp
after = snapshot()
new_loggers = {n: v for n, v in after["loggers"].items() if n not in before["loggers"]}
after["loggers"] = {n: v for n, v in after["loggers"].items() if n in before["loggers"]}
changed = {k: [before[k], after[k]] for k in before if before[k] != after[k]}
print("RESULT " + json.dumps({"changed": changed, "new_loggers": new_loggers, "cdll": CALLS}, default=str))
"""
)


def _python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _result(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def test_import_changes_no_process_wide_setting():
    out = _result(_python(SNAPSHOT))
    assert out["changed"] == {}
    # the package's own loggers exist, with no handler, no level and propagation on (the host decides)
    assert out["new_loggers"], "the walker saw no logger at all"
    for name, state in out["new_loggers"].items():
        assert state == {"level": 0, "handlers": [], "propagate": True, "disabled": False}, name
    assert out["cdll"] == []  # no allocator call at import


HARVEST = (
    CDLL_SPY
    + """
import json, os, sys
import sae_lens_autointerp as sai
from sae_lens_autointerp.harvest import run
sys.path.insert(0, {tests!r})
from sae_factories import make_hooked, make_sae
from transformers import AutoTokenizer
model = make_hooked("HookedTransformer", AutoTokenizer.from_pretrained(sai.embedded.model_dir()))
sae = make_sae(64, 32, hook="blocks.1.hook_resid_post", context_size=32)
out = []
for kwargs, env in {cases!r}:
    os.environ["SAE_AUTOINTERP_PIN_MALLOC"] = env
    run._MALLOC_PINNED = False  # as in a fresh process
    CALLS.clear()
    sae.autointerp.harvest(model, ["one short text about the weather", "and another one"], n_tokens=64,
                           ctx_len=32, store_dir={store!r}, progress=False, **kwargs)
    out.append(CALLS.count("mallopt"))
print("RESULT " + json.dumps(out))
"""
)

HARVEST_CASES = [  # (harvest keyword arguments, SAE_AUTOINTERP_PIN_MALLOC, pinned)
    ({}, "", False),
    ({"pin_malloc": False}, "", False),
    ({"pin_malloc": False}, "1", False),  # the argument wins over the environment
    ({}, "0", False),
    ({}, "1", True),
    ({"pin_malloc": True}, "", True),
]


def test_harvest_pins_malloc_only_when_asked(tmp_path):
    code = HARVEST.format(
        tests=str(ROOT / "tests"), cases=[c[:2] for c in HARVEST_CASES], store=str(tmp_path / "store")
    )
    mallopt_calls = _result(_python(code))
    pins = 2 if sys.platform.startswith("linux") else 0  # M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (glibc only)
    assert mallopt_calls == [pins if pinned else 0 for *_, pinned in HARVEST_CASES]
    assert (tmp_path / "store" / "meta.json").is_file()  # the harvests ran


CLI = (
    CDLL_SPY
    + """
import json, logging, sys
from sae_lens_autointerp import cli
from sae_lens_autointerp.harvest import run
out = []
for flags in {cases!r}:
    print("CASE", flags, file=sys.stderr, flush=True)
    run._MALLOC_PINNED = False
    CALLS.clear()
    code = cli.main([*flags, "plugins", "--json"])
    log = logging.getLogger("sae_lens_autointerp")
    logging.getLogger("sae_lens_autointerp.some_module").info("an info line")
    logging.getLogger("sae_lens_autointerp.some_module").warning("a warning line")
    out.append({{"code": code, "level": log.level, "mallopt": CALLS.count("mallopt"), "handlers": len(log.handlers)}})
print("RESULT " + json.dumps(out))
"""
)

CLI_CASES = [  # (flags, package logger level, lines shown on stderr)
    ([], 30, ["WARNING: a warning line"]),
    (["-v"], 20, ["INFO: an info line", "WARNING: a warning line"]),
    (["-vv"], 10, ["INFO: an info line", "WARNING: a warning line"]),
    (["--quiet"], 40, []),
]


def test_cli_logging_flags_and_no_malloc_pinning():
    proc = _python(CLI.format(cases=[flags for flags, *_ in CLI_CASES]), env={"SAE_AUTOINTERP_PIN_MALLOC": ""})
    results = _result(proc)
    shown: list[list[str]] = []
    for line in proc.stderr.splitlines():
        if line.startswith("CASE "):
            shown.append([])
        elif line.startswith("sae-autointerp: ") and shown:
            shown[-1].append(line.removeprefix("sae-autointerp: "))
    for (flags, level, lines), out, seen in zip(CLI_CASES, results, shown, strict=True):
        assert out["code"] == 0 and out["level"] == level, flags
        assert out["handlers"] == 1, flags  # one handler, however often main() runs
        assert seen == lines, flags
        assert out["mallopt"] == 0, flags  # no pinning by default: it made every forward pass 1.6-1.75x slower


def test_cli_version():
    import sae_lens_autointerp

    proc = subprocess.run(
        [sys.executable, "-m", "sae_lens_autointerp.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"sae-autointerp {sae_lens_autointerp.__version__}"


@pytest.mark.parametrize(
    "module", ["sae_lens_autointerp", "sae_lens_autointerp.harvest", "sae_lens_autointerp.harvest.store"]
)
def test_activation_store_is_a_deprecated_alias_of_latent_store(module):
    import importlib

    from sae_lens_autointerp import LatentStore

    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=r"ActivationStore is deprecated.*use LatentStore") as record:
        old = mod.ActivationStore
    assert old is LatentStore
    assert record[0].filename == __file__  # the warning points at the code that used the old name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(mod, "LatentStore", LatentStore) is LatentStore  # the new name is silent
    with pytest.raises(AttributeError, match="no attribute 'ActivationStores'"):
        mod.ActivationStores  # noqa: B018
    if module == "sae_lens_autointerp":
        assert "LatentStore" in mod.__all__ and "ActivationStore" not in mod.__all__  # star imports stay silent


def test_from_import_of_the_old_name_works():
    code = textwrap.dedent("""
        import json, warnings
        import sae_lens_autointerp
        warnings.simplefilter("error", DeprecationWarning)
        try:
            from sae_lens_autointerp import ActivationStore
        except DeprecationWarning as w:
            print("RESULT " + json.dumps(str(w)))
        warnings.simplefilter("ignore", DeprecationWarning)
        from sae_lens_autointerp import ActivationStore, LatentStore
        assert ActivationStore is LatentStore
    """)
    proc = _python(code)
    assert "use LatentStore" in _result(proc)
