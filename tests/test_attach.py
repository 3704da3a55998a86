"""import sae_lens_autointerp attaches explain / score / autointerp to every SAELens SAE, safely."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY

import sae_lens_autointerp as sai
from sae_factories import make_sae


def _instantiate(arch: str):
    sae_cls, cfg_cls = SAE_CLASS_REGISTRY[arch]
    kwargs = {"d_in": 512, "d_sae": 32}  # 512: TemporalSAE needs d_in divisible by 64 * n_heads (8)
    if "transcoder" in arch:
        kwargs["apply_b_dec_to_input"] = False  # SAELens rejects it for transcoders
    for extra, value in {"k": 4, "d_out": 512, "bottleneck_factor": 8, "n_heads": 4}.items():
        if extra in cfg_cls.__dataclass_fields__:
            kwargs[extra] = value
    try:
        return sae_cls(cfg_cls(**kwargs))
    except TypeError as exc:  # an architecture whose config needs fields we do not know about
        pytest.skip(f"{arch}: {exc}")


@pytest.mark.parametrize("arch", sorted(SAE_CLASS_REGISTRY))
def test_every_registered_architecture_has_the_methods(arch):
    sae = _instantiate(arch)
    assert callable(sae.explain) and callable(sae.score)
    ns = sae.autointerp
    assert isinstance(ns, sai.AutointerpNamespace) and ns.sae is sae
    assert callable(ns.harvest)


def test_methods_on_saes_created_before_import_and_idempotent():
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("error", RuntimeWarning)
        from sae_lens import StandardSAE, StandardSAEConfig
        sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
        assert not hasattr(sae, "explain")
        import sae_lens_autointerp
        import importlib
        assert callable(sae.explain) and sae.autointerp.sae is sae
        assert sae_lens_autointerp.attach.install() == []   # second install attaches nothing, warns nothing
        importlib.reload(sae_lens_autointerp)                # neither does a reload
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_never_overrides_an_existing_attribute():
    code = textwrap.dedent(
        """
        import warnings
        from sae_lens import SAE
        def explain(self):
            return "sae-lens own"
        SAE.explain = explain           # pretend a future SAELens defines explain()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import sae_lens_autointerp as sai
        assert SAE.explain is explain
        assert any("already defines 'explain'" in str(w.message) for w in caught), [str(w.message) for w in caught]
        from sae_lens import StandardSAE, StandardSAEConfig
        sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
        assert sae.explain() == "sae-lens own"
        assert callable(sae.score) and callable(sai.for_sae(sae).explain)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_module_state_is_untouched(tmp_path):
    sae = make_sae(16, 32, hook="blocks.0.hook_resid_pre")
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    _ = sae.autointerp, sae.explain, sae.score
    assert "autointerp" not in sae.__dict__ and "autointerp" not in dict(sae.named_children())
    assert sae.state_dict().keys() == before.keys()
    clone = copy.deepcopy(sae)
    assert clone.autointerp.sae is clone
    # SAELens SAEs hold a local lambda and do not pickle by themselves; what we add must not be in the state.
    assert not any("autointerp" in str(k) for k in sae.__getstate__())
    restored = pickle.loads(pickle.dumps(sae.state_dict()))
    assert torch.equal(restored["W_enc"], sae.W_enc)
    sae.save_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert torch.equal(loaded.W_enc, sae.W_enc) and callable(loaded.explain)
    for k, v in before.items():
        assert torch.equal(sae.state_dict()[k], v)


def test_type_hints_are_shipped():
    import importlib.resources
    import inspect

    assert importlib.resources.files("sae_lens_autointerp").joinpath("py.typed").is_file()
    hints = inspect.signature(sai.AutointerpNamespace.harvest)
    assert hints.return_annotation in ("LatentStore", sai.LatentStore)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SAE.explain.__doc__ and SAE.autointerp.__doc__
