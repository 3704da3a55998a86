"""The activation store under concurrency, crashes and corruption: two real processes harvesting one store,
a kill between the checkpoint's writes, a flipped byte, a changed weight."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest.store import LatentStore

HARVEST = textwrap.dedent("""
    import json, sys
    import sae_lens_autointerp as sai
    from pydoc_data.topics import topics
    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    texts = [topics[k] for k in sorted(topics)][:60]
    store = sae.autointerp.harvest(model, texts, n_tokens=40 * 128, ctx_len=128, batch_size=4,
                                   store_dir=sys.argv[1], checkpoint_every_s=0, progress=False)
    print(json.dumps(store.summary()))
""")


def _harvest_in(folder, *extra):
    return subprocess.Popen(
        [sys.executable, "-c", HARVEST, str(folder), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"HF_HUB_OFFLINE": "1", **_env()},
    )


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}


def test_two_processes_harvesting_one_store_do_not_corrupt_it(tmp_path):
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    first, second = _harvest_in(shared), _harvest_in(shared)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[1][-2000:] for o in outs]
    reference = _harvest_in(alone)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-2000:]
    a, b = LatentStore(shared), LatentStore(alone)
    assert (shared / "tokens.bin").stat().st_size == 40 * 128 * 4  # not twice
    assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    for name in ("n_fire_tokens", "top_ids", "res_ids", "pool_ids"):
        assert torch.equal(a.stats[name], b.stats[name]), name
    assert json.loads(outs[0][0].splitlines()[-1]) == json.loads(outs[1][0].splitlines()[-1])


def test_a_kill_between_the_checkpoint_writes_does_not_double_count(bridge_model, embedded_sae, tmp_path, monkeypatch):
    """Stats written, meta.json not: the resume must not count those batches twice (mean L0 stays 32 for the
    TopK-32 SAE)."""
    from pydoc_data.topics import topics

    import sae_lens_autointerp.harvest.store as store_mod

    texts = [topics[k] for k in sorted(topics)][:60]
    real = store_mod.write_json_atomic
    calls = {"n": 0}

    def dies_on_the_third(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("FAKE: killed after the statistics, before meta.json")
        real(path, data)

    monkeypatch.setattr(store_mod, "write_json_atomic", dies_on_the_third)
    kwargs = dict(
        n_tokens=40 * 128, ctx_len=128, batch_size=4, store_dir=tmp_path, checkpoint_every_s=0, progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        embedded_sae.autointerp.harvest(bridge_model, texts, **kwargs)
    monkeypatch.setattr(store_mod, "write_json_atomic", real)
    store = embedded_sae.autointerp.harvest(bridge_model, texts, **kwargs)
    fresh = embedded_sae.autointerp.harvest(bridge_model, texts, **{**kwargs, "store_dir": tmp_path / "fresh"})
    assert store.summary()["mean_l0"] == pytest.approx(32.0, abs=0.5)
    assert torch.equal(store.stats["n_fire_tokens"], fresh.stats["n_fire_tokens"])
    assert torch.equal(store.stats["top_vals"], fresh.stats["top_vals"])


def test_a_corrupt_store_is_refused_by_name(bridge_model, embedded_sae, tmp_path):
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)][:20]
    store = embedded_sae.autointerp.harvest(
        bridge_model, texts, n_tokens=10 * 128, ctx_len=128, store_dir=tmp_path, progress=False
    )
    tokens = tmp_path / "tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[100] ^= 0xFF
    tokens.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=rf"store {tmp_path} is corrupt: tokens.bin does not match.*harvest"):
        LatentStore(store.path)
    tokens.write_bytes(bytes(data[:-4]))
    with pytest.raises(ConfigError, match="tokens.bin holds"):
        LatentStore(store.path)


def test_a_changed_weight_is_another_model(bridge_model):
    """The store key covers every parameter: a changed layer-2 weight must not reuse layer-0's store."""
    from sae_factories import make_sae
    from sae_lens_autointerp.harvest.model import ModelAdapter

    sae = make_sae(576, 8, seed=0)
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    adapter = ModelAdapter(bridge_model, sae)
    before = adapter.fingerprint()
    name, param = [(n, p) for n, p in bridge_model.named_parameters() if ".2." in n][0]
    with torch.no_grad():
        param.view(-1)[0] += 1.0
        try:
            after = adapter.fingerprint()
        finally:
            param.view(-1)[0] -= 1.0
    assert before["weights_blake2b"] != after["weights_blake2b"], name
    assert adapter.fingerprint() == before and before["tokenizer_sha256"]


# ---------------------------------------------------------------- in-place edits through .data (R6)

TINY = dict(n_tokens=8 * 128, ctx_len=128, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def texts():
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)][:20]


@pytest.fixture(scope="module")
def tiny_store(bridge_model, embedded_sae, texts, tmp_path_factory):
    """A small finished store, copied by the tests that damage or lock it."""
    return embedded_sae.autointerp.harvest(
        bridge_model, texts, store_dir=tmp_path_factory.mktemp("tiny"), checkpoint_every_s=0, **TINY
    )


def _copy(store, tmp_path):
    import shutil

    return shutil.copytree(store.path, tmp_path / "store")


def _layer2_weight(model):
    return next(p for n, p in model.named_parameters() if ".2." in n and p.ndim == 2)


EDITS = {
    "times -3": lambda w: w.data.mul_(-3),
    "one value +1e-3": lambda w: w.data[0, 0].add_(1e-3),
    "two rows swapped": lambda w: w.data.copy_(w.data[torch.tensor([1, 0, *range(2, w.shape[0])])]),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_through_data_is_another_model(bridge_model, edit):
    """``.data`` edits bump neither the version counter nor the address the digest cache was keyed on."""
    from sae_factories import make_sae
    from sae_lens_autointerp.harvest.model import ModelAdapter

    sae = make_sae(576, 8, seed=0)
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    adapter = ModelAdapter(bridge_model, sae)
    before = adapter.fingerprint()["weights_blake2b"]
    weight = _layer2_weight(bridge_model)
    saved = weight.detach().clone()
    version = weight._version
    try:
        EDITS[edit](weight)
        assert weight._version == version  # the edit the old stamp could not see
        assert adapter.fingerprint()["weights_blake2b"] != before
    finally:
        weight.data.copy_(saved)
    assert adapter.fingerprint()["weights_blake2b"] == before


def test_a_harvest_after_a_data_edit_does_not_reuse_the_store(bridge_model, embedded_sae, texts, tiny_store, tmp_path):
    folder = _copy(tiny_store, tmp_path)
    weight = _layer2_weight(bridge_model)
    saved = weight.detach().clone()
    try:
        weight.data.mul_(-3)
        with pytest.raises(ConfigError, match="holds a store for other inputs"):
            embedded_sae.autointerp.harvest(bridge_model, texts, store_dir=folder, **TINY)
    finally:
        weight.data.copy_(saved)
    assert embedded_sae.autointerp.harvest(bridge_model, texts, store_dir=folder, **TINY).key == tiny_store.key


def test_the_digest_is_hashed_once_per_change(bridge_model, monkeypatch):
    """Repeat calls cost the content stamp only (SmolLM2-135M, one thread on 2 busy cores: the stamp 0.075 s,
    hashing 1.5 s); an edit rehashes once."""
    from sae_lens_autointerp.subjects import as_subject, digests

    subject = as_subject(bridge_model)
    calls = []
    real = digests._hash_weights
    monkeypatch.setattr(digests, "_hash_weights", lambda params: calls.append(1) or real(params))
    weight = _layer2_weight(bridge_model)
    saved = weight.detach().clone()
    try:
        weight.data[0, 0].add_(1.0)
        first = digests.weights_digest(subject)
        assert digests.weights_digest(subject) == first and len(calls) == 1
    finally:
        weight.data.copy_(saved)
    digests.weights_digest(subject)
    assert len(calls) == 2


# ---------------------------------------------------------------- corrupt metadata (R18)

META_DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "a list": lambda text: "[1, 2]",
    "without settings": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "settings"}),
    "settings a list": lambda text: json.dumps({**json.loads(text), "settings": [1]}),
    "checksums garbled": lambda text: json.dumps({**json.loads(text), "files": {"tokens.bin": "x"}}),
    "without a key": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "key"}),
}


@pytest.mark.parametrize("damage", list(META_DAMAGE))
def test_a_damaged_meta_json_is_a_corrupt_store(tiny_store, tmp_path, damage):
    folder = _copy(tiny_store, tmp_path)
    meta = folder / "meta.json"
    meta.write_text(META_DAMAGE[damage](meta.read_text()))
    with pytest.raises(ConfigError, match=rf"store {folder} is corrupt: meta\.json.*Delete the folder"):
        LatentStore(folder)


def test_harvest_names_a_damaged_meta_json(bridge_model, embedded_sae, texts, tiny_store, tmp_path):
    folder = _copy(tiny_store, tmp_path)
    (folder / "meta.json").write_text("[]")
    with pytest.raises(ConfigError, match=rf"store {folder} is corrupt: meta\.json holds a list"):
        embedded_sae.autointerp.harvest(bridge_model, texts, store_dir=folder, **TINY)


def test_a_store_without_checksums_keeps_the_size_check_and_refuses_zeroed_tokens(tiny_store, tmp_path):
    folder = _copy(tiny_store, tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["files"]  # as older stores
    (folder / "meta.json").write_text(json.dumps(meta))
    assert LatentStore(folder).n_sequences == 8  # intact: still opens
    tokens = folder / "tokens.bin"
    size = tokens.stat().st_size
    tokens.write_bytes(bytes(size))
    with pytest.raises(ConfigError, match=rf"store {folder} is corrupt: tokens.bin is all zeros"):
        LatentStore(folder)
    tokens.write_bytes(bytes(size - 4))
    with pytest.raises(ConfigError, match="tokens.bin holds"):
        LatentStore(folder)


# ---------------------------------------------------------------- read-only folders and full disks (R16)


def _fake_read_only_lock(monkeypatch):
    """FAKE: opening a ``.lock`` for writing fails as on a read-only mount (as root, chmod stops nothing)."""
    import builtins
    import errno

    from sae_lens_autointerp import locks

    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(".lock") and any(c in mode for c in "wa+x"):
            raise OSError(errno.EROFS, "Read-only file system (FAKE)", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(locks, "open", read_only_open, raising=False)


def test_a_finished_store_in_a_read_only_folder_is_reused(
    bridge_model, embedded_sae, texts, tiny_store, tmp_path, monkeypatch
):
    folder = _copy(tiny_store, tmp_path)
    _fake_read_only_lock(monkeypatch)
    store = embedded_sae.autointerp.harvest(bridge_model, texts, store_dir=folder, **TINY)
    assert store.key == tiny_store.key and store.complete
    (folder / ".lock").unlink()  # no lock file to share either: read without one
    assert embedded_sae.autointerp.harvest(bridge_model, texts, store_dir=folder, **TINY).key == tiny_store.key


def test_an_unfinished_store_in_a_read_only_folder_is_refused_by_name(
    bridge_model, embedded_sae, texts, tmp_path, monkeypatch
):
    folder = tmp_path / "empty"
    folder.mkdir()
    _fake_read_only_lock(monkeypatch)
    with pytest.raises(ConfigError, match=rf"store folder {folder} cannot be written .*pass a store_dir"):
        embedded_sae.autointerp.harvest(bridge_model, texts, store_dir=folder, **TINY)
    assert list(folder.iterdir()) == []


def test_folder_lock_on_a_folder_it_cannot_create(tmp_path, monkeypatch):
    import errno
    import pathlib

    from sae_lens_autointerp.locks import folder_lock

    def read_only_mkdir(self, *args, **kwargs):  # FAKE: the parent is on a read-only mount
        raise OSError(errno.EROFS, "Read-only file system (FAKE)", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only_mkdir)
    with pytest.raises(ConfigError, match=rf"cannot create the folder {tmp_path / 'new'} \(Read-only"):
        with folder_lock(tmp_path / "new", "harvest"):
            pass


def test_folder_lock_says_whether_it_holds_the_folder(tmp_path, monkeypatch):
    import fcntl

    from sae_lens_autointerp.locks import folder_lock

    with folder_lock(tmp_path, "run") as held:
        assert held is True
    _fake_read_only_lock(monkeypatch)
    with pytest.raises(ConfigError, match=rf"cannot write in the run folder {tmp_path} \(Read-only"):
        with folder_lock(tmp_path, "run"):  # a caller that must write
            pass
    with folder_lock(tmp_path, "run", read_only_ok=True) as held:  # .lock exists: shared, read-only
        assert held is False
        with open(tmp_path / ".lock") as other:  # a writer elsewhere cannot take it while we read
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.parametrize("how", ["OSError", "SafetensorError"])
def test_a_full_disk_at_a_checkpoint_names_the_folder(
    bridge_model, embedded_sae, texts, tiny_store, tmp_path, monkeypatch, how
):
    """FAKE full disk on the second checkpoint: one line naming the folder; the first checkpoint is intact and
    the harvest resumes from it to the store an uninterrupted harvest writes."""
    import errno

    from safetensors import SafetensorError

    import sae_lens_autointerp.harvest.store as store_mod

    real = store_mod.save_file
    calls = {"n": 0}

    def fills_up(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            if how == "OSError":
                raise OSError(errno.ENOSPC, "No space left on device (FAKE)")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28) (FAKE)")
        return real(*args, **kwargs)

    monkeypatch.setattr(store_mod, "save_file", fills_up)
    folder = tmp_path / "full"
    with pytest.raises(ConfigError, match=rf"could not write the harvest checkpoint in {folder}: no space is left"):
        embedded_sae.autointerp.harvest(bridge_model, texts, store_dir=folder, checkpoint_every_s=0, **TINY)
    assert not (folder / "stats.safetensors.tmp").exists()
    assert LatentStore(folder).n_sequences == 4  # the first checkpoint (one batch)
    monkeypatch.setattr(store_mod, "save_file", real)
    store = embedded_sae.autointerp.harvest(bridge_model, texts, store_dir=folder, checkpoint_every_s=0, **TINY)
    assert torch.equal(store.stats["n_fire_tokens"], tiny_store.stats["n_fire_tokens"])
    assert np.array_equal(np.asarray(store.tokens), np.asarray(tiny_store.tokens))


REUSE_READ_ONLY = textwrap.dedent("""
    import sys
    import sae_lens_autointerp as sai
    from pydoc_data.topics import topics
    from sae_lens_autointerp.errors import ConfigError
    folder = sys.argv[1]
    try:
        open(folder + "/probe", "w")
    except OSError as err:
        print("READ-ONLY", err.errno)
    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    texts = [topics[k] for k in sorted(topics)][:20]
    kwargs = dict(n_tokens=8 * 128, ctx_len=128, batch_size=4, progress=False)
    print("KEY", sae.autointerp.harvest(model, texts, store_dir=folder, **kwargs).key)
    try:
        sae.autointerp.harvest(model, texts, store_dir=folder + "/other", **kwargs)
    except ConfigError as err:
        print("ERROR", err)
""")


def _read_only_mount(folder, *command):
    """``command`` run with ``folder`` bind-mounted read-only in a private user and mount namespace."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(folder), *command],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_read_only_mount_serves_a_finished_store(tiny_store, tmp_path):
    """The real thing, where user namespaces allow it: harvest() reuses a finished store on a read-only mount,
    and a store it would have to write there is refused by name."""
    import shutil

    if shutil.which("unshare") is None or _read_only_mount(tmp_path, "true").returncode != 0:
        pytest.skip("cannot bind-mount read-only here (no unshare, or user namespaces are disabled)")
    folder = _copy(tiny_store, tmp_path)
    (folder / ".lock").unlink()  # a store copied without its lock file
    done = _read_only_mount(folder, sys.executable, "-c", REUSE_READ_ONLY, str(folder))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "READ-ONLY 30" in lines  # EROFS: the mount really is read-only
    assert f"KEY {tiny_store.key}" in lines
    error = next(line for line in lines if line.startswith("ERROR"))
    assert f"cannot create the folder {folder}/other (Read-only file system)" in error
