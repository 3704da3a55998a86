"""A protocol's own latent filters (``latent_filters`` on an explainer or scorer; pipeline.protocol_filters):
defaults yield to the protocol, the user's explicit setting wins, two protocols that disagree are refused,
and a protocol may set only the latent filters."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from sae_lens_autointerp.errors import ConfigError, PluginError
from sae_lens_autointerp.pipeline import protocol_filters
from sae_lens_autointerp.sampling import SamplingConfig

DENSE = SimpleNamespace(latent_filters={"max_frequency": 1.0, "min_activating": 0})


def test_defaults_take_the_protocols_filters():
    out = protocol_filters(SamplingConfig(n_explain=12), {"saebench": DENSE, "detection": SimpleNamespace()})
    assert (out.max_frequency, out.min_activating, out.n_explain) == (1.0, 0, 12)
    plain = SamplingConfig()
    assert protocol_filters(plain, {"detection": SimpleNamespace(), None: None}) is plain


def test_the_users_own_filter_wins_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sae_lens_autointerp"):
        out = protocol_filters(SamplingConfig(max_frequency=0.1), {"saebench": DENSE})
    assert (out.max_frequency, out.min_activating) == (0.1, 0)
    assert "keeping your max_frequency=0.1" in caplog.text


def test_disagreeing_protocols_and_other_fields_are_refused():
    other = SimpleNamespace(latent_filters={"max_frequency": 0.5})
    with pytest.raises(ConfigError, match="need different max_frequency"):
        protocol_filters(SamplingConfig(), {"saebench": DENSE, "other": other})
    with pytest.raises(PluginError, match="only .*can be set"):
        protocol_filters(SamplingConfig(), {"bad": SimpleNamespace(latent_filters={"n_explain": 3})})
