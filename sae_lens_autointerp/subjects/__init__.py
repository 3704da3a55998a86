"""The model whose latents we read, whatever library holds it: one interface over TransformerLens
(``HookedTransformer`` / ``TransformerBridge`` and their SAE variants), plain Hugging Face ``transformers``
models and nnsight models.

Everything that runs the subject model (harvest capture, steering, ablation, neighbour negatives, the decoder's
logit lens) goes through :class:`Subject`: ``resolve`` turns the SAE's TransformerLens hook name into a point
of this model (refusing an unknown one before any forward pass), and ``run`` does one forward pass with
hook functions ``fn(activation) -> replacement | None`` at those points. A hook may raise
:class:`StopForward` to end the pass once it has what it needs, so nothing after it is computed.

- TransformerLens: its own hook points (``model.hooks``), cut short with ``stop_at_layer`` as a second guard.
- Hugging Face: the hook name is mapped to the input or output of one module (``hookmap.py``) and read or
  written with PyTorch forward (pre-)hooks; ``HFModel(..., hook_module=, hook_fn=)`` names the module
  yourself for tensors the map does not know.
- nnsight: the same module points, read and written inside nnsight's own ``trace`` (in execution order, as
  nnsight requires), on the model nnsight wraps. ``NNsightModel(model, remote=True)`` reads through NDIF
  (saved tensors only; steering refused, untested here: see docs/models.md).
"""

from .adapt import as_subject, with_hook_module
from .base import HookFn, ModuleReader, StopForward, Subject
from .digests import tokenizer_digest, weights_digest
from .hf import HFModel
from .nnsight_model import NNsightModel
from .tl import TLSubject

__all__ = [
    "HFModel",
    "HookFn",
    "ModuleReader",
    "NNsightModel",
    "StopForward",
    "Subject",
    "TLSubject",
    "as_subject",
    "tokenizer_digest",
    "weights_digest",
    "with_hook_module",
]
