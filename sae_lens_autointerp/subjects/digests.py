"""Digests of a subject's weights and tokenizer, for store keys (kept per object while it is unchanged)."""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any

import torch

from .base import Subject

_digests: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


def weights_digest(subject: Subject) -> str:
    """blake2b of every parameter's name, shape and bytes (a fine-tune that changes one layer is another model).

    Hashing streams every byte (about 1 s for 135M parameters), so the digest is kept per model object under
    a key of each parameter's storage address and version counter: any in-place change bumps the counter
    (optimizer steps, ``copy_``, ``mul_``) and any replaced parameter has a new address, so either rehashes."""
    params = list(subject.named_parameters())
    stamp = tuple((name, p.data_ptr(), p._version, tuple(p.shape), p.dtype) for name, p in params)
    try:
        cached = _digests.get(subject.model)
    except TypeError:
        cached = None
    if cached is not None and cached[0] == stamp:
        return cached[1]
    digest = hashlib.blake2b(digest_size=32)
    for name, param in params:
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(param.detach().contiguous().cpu().view(torch.uint8).numpy().data)  # its buffer: no copy
    value = digest.hexdigest()
    try:
        _digests[subject.model] = (stamp, value)
    except TypeError:
        pass
    return value


_token_digests: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of the sorted vocabulary (kept per tokenizer object while its size stays the same: tokens are only
    ever added to a loaded tokenizer)."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else -1
    try:
        cached = _token_digests.get(tokenizer)
    except TypeError:
        cached = None
    if cached is not None and cached[0] == size:
        return cached[1]
    vocab = getattr(tokenizer, "get_vocab", None)
    value = hashlib.sha256(
        json.dumps(sorted(vocab().items()) if callable(vocab) else [], ensure_ascii=False).encode()
    ).hexdigest()
    try:
        _token_digests[tokenizer] = (size, value)
    except TypeError:
        pass
    return value
