"""A run's folder: its run key, the claim on the folder, ``run.json`` and ``usage.json``.

The run key hashes what changes a latent's answers: the RunConfig fields that do, the store, the LLM client's
identity and the versions of the prompts and plugins (out_dir, latents, concurrency, budgets and harvest
settings do not change a latent's answers; the store key covers the harvest). One folder holds one run: a
folder holding another run's results is refused, naming what differs. The guard reads run.json and, where
run.json does not name this run (deleted, corrupt, of an old format), the run keys in results.jsonl; a folder
busy with another run is refused at once, without waiting for that run to end.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config import CONFIG_FORMAT
from ..errors import ConfigError
from ..harvest.store import LatentStore
from ..loading import sae_provenance
from ..locks import folder_lock
from ..paths import cache_dir
from ..records import PROMPT_VERSION
from ..results import ResultsFile, writes_to
from .plan import Plan, client_identity


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes (``path``), under which key, and the identity the key hashes."""

    path: Path
    run_key: str
    identity: dict[str, Any]

    @classmethod
    def of(cls, plan: Plan, store: LatentStore, client: Any, heuristic: dict[str, Any] | None) -> RunFolder:
        """The folder of the run ``plan`` describes on ``store`` with ``client`` (``heuristic``: the identity
        of the heuristic explanations when they are on, see ``flags.substitute_identity``)."""
        cfg = plan.config
        ident = {
            "store": store.key,
            "explainer": plan.explainer,
            "explainer_kwargs": cfg.explainer_kwargs or None,
            "explainer_prompt": getattr(plan.explainer_obj, "prompt_id", None),
            "scorers": plan.scorer_names,
            "scorer_kwargs": cfg.scorer_kwargs or None,
            "scorer_prompts": {n: getattr(o, "prompt_id", None) for n, o in plan.scorer_objs.items()},
            "providers": plan.providers,
            "sampling": asdict(plan.sampling),
            "llm": client_identity(client),
            "seed": cfg.seed,
            "controls": plan.control_fractions,
            "prompt_version": PROMPT_VERSION,
            "explanations": None if plan.given is None else {k: v.text for k, v in sorted(plan.given.items())},
        }
        if heuristic is not None:  # only then do the heuristics change answers (old run keys stay as they were)
            ident["heuristic_explanations"] = heuristic
        run_key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
        path = Path(cfg.out_dir) if cfg.out_dir is not None else cache_dir("runs") / run_key[:16]
        return cls(path, run_key, ident)

    def open_results(self) -> ResultsFile:
        """The run's results.jsonl (one object per run: it holds the open file and the index)."""
        return ResultsFile(self.path / "results.jsonl")

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the folder for this run: a concurrent run of the same key waits here, then finds its latents
        done; a folder that holds another run's results is refused (at once when that run is still going)."""
        with ExitStack() as held:
            try:
                held.enter_context(folder_lock(self.path, "run", wait=False))
            except BlockingIOError:
                self._refuse_other(self._run_json())  # busy: never wait for a run that is not this one
                held.enter_context(folder_lock(self.path, "run"))
            self._claim()
            yield

    def _run_json(self) -> dict[str, Any] | None:
        """run.json as a dict, or None when it is missing, unreadable or not an object."""
        try:
            previous = json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return previous if isinstance(previous, dict) else None

    def _claim(self) -> None:
        previous = self._run_json()
        self._refuse_other(previous)
        if previous is not None and previous.get("run_key") == self.run_key:
            return
        # run.json does not name this run (missing, corrupt, of an old format): the results file says whose it is
        if not (self.path / "results.jsonl").is_file():
            return
        others = sorted(k for k in ResultsFile(self.path / "results.jsonl").run_keys() if k != self.run_key)
        if others:
            raise ConfigError(
                f"{self.path} holds the results of another run ({', '.join(k[:12] for k in others)}; its run.json "
                f"is missing, unreadable or of an old format, so what differs is unknown); this run is "
                f"{self.run_key[:12]}. Results of two runs are never mixed: pass another out_dir, or delete "
                f"{self.path}"
            )

    def _refuse_other(self, previous: dict[str, Any] | None) -> None:
        """Refuse the folder when run.json names another run, saying what differs."""
        if previous is None or not previous.get("run_key") or previous["run_key"] == self.run_key:
            return
        other = str(previous["run_key"])

        def canonical(value: Any) -> str:  # as run.json holds it (JSON object keys are strings)
            return json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True)

        ident = self.identity
        differ = sorted(k for k in ident if canonical(previous.get(k)) != canonical(ident[k]))
        raise ConfigError(
            f"{self.path} holds the results of another run ({other[:12]}, explainer "
            f"{previous.get('explainer')!r}, scorers {previous.get('scorers')}); this run is {self.run_key[:12]} "
            f"and differs in: {', '.join(differ) or 'its identity'}. Results of two runs are never mixed: pass "
            f"another out_dir, or delete {self.path}"
        )

    def write_run_json(self, plan: Plan, client: Any, store: LatentStore, sae: Any) -> None:
        """run.json: the run key, the versions, the identity, the whole config and where the store is."""
        record = {
            "run_key": self.run_key,
            "version": __version__,
            "versions": versions(),
            **self.identity,
            "llm": getattr(client, "name", None),
            "llm_identity": self.identity["llm"],
            "store_path": str(store.path),  # "store" (from the identity) is the store's key
            "sae_source": sae_provenance(sae),  # SAELens release / id, Neuronpedia id, model, dataset
            "config": plan.config.to_dict(),
            "format": CONFIG_FORMAT,
        }
        _write_atomic(self.path / "run.json", json.dumps(record, indent=1, default=str))

    def write_usage(self, summary: dict[str, Any]) -> None:
        _write_atomic(self.path / "usage.json", json.dumps(summary, indent=1, default=str))


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it): the folder guard reads run.json,
    and a run killed mid-write must not leave half of one. A full disk or a read-only folder is one line."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writes_to(path):
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def versions() -> dict[str, str | None]:
    """The versions of what a run depends on (recorded in run.json)."""
    import importlib.metadata
    import platform

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "sae-lens-autointerp",
        "sae-lens",
        "transformer-lens",
        "torch",
        "transformers",
        "llama-cpp-python",
        "sentence-transformers",
        "openai",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out
