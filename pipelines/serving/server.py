"""`selfguided serve [MODEL_URI]`: a model version behind an OpenAI-compatible HTTP endpoint.

Two backends, both speaking `GET /v1/models`, `POST /v1/chat/completions` (plain and `stream: true`)
and `GET /health`, chosen by `model/engines.pick_backend` (the generate step's choice too):

- vLLM's OpenAI server, when vLLM is installed and a GPU is present: it serves the merged export
  (`artifact.export_merged`: adapter folded in, bf16, tokenizer with the chat template that
  prompts as the model was trained) under the served model name. `--max-new-tokens` and greedy
  decoding become vLLM's generation defaults (vLLM also caps requests at that many tokens).
- otherwise the small FastAPI app of `serving/app.py` on the transformers model.

MODEL_URI resolution: `serving/resolve.py`; the protocol: `serving/protocol.py`. Every answer of the
transformers backend becomes a production trace (`serving/tracing.py`); vLLM's are traced by running
`selfguided serve MODEL_URI --proxy-to VLLM_URL` in front of it (`serving/proxy.py`), which is how
the KServe deployment traces (manifests/serving/transformer.yaml).
"""

import argparse
import sys
import tempfile
import threading
from pathlib import Path

from selfguided.components.model import artifact as tm
from selfguided.pipelines.options import add_option, add_tracking_uri, quiet_libraries
from selfguided.pipelines.serving.app import DEFAULT_MAX_NEW_TOKENS, create_app
from selfguided.pipelines.serving.resolve import DEFAULT_MODEL_URI, ServeError, one_line, resolve_model
from selfguided.pipelines.serving.tracing import TracingError, add_tracing_arguments, check_tracing_arguments
from selfguided.pipelines.workdir import default_tracking_uri

def _choose_backend(wanted: str) -> str:
    from selfguided.components.model.engines import EngineError, pick_backend

    try:
        return pick_backend(wanted)
    except EngineError as exc:
        raise ServeError(f"--{exc}") from None


def _run_uvicorn(app, host: str, port: int) -> int:
    """Serve `app` until interrupted (tests replace this)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def _exit_on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)


def run_serve(args: argparse.Namespace) -> int:
    """`selfguided serve`: resolve MODEL_URI, then serve it until interrupted; 2 when it cannot."""
    tracking_uri = args.tracking_uri or default_tracking_uri()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a pod stopping) exits through Python, so the downloaded version is removed and a
        # vLLM child is stopped; uvicorn re-raises it after its graceful shutdown.
        import signal

        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        check_tracing_arguments(args)
    except TracingError as exc:
        print(f"selfguided serve: error: {exc}", file=sys.stderr)
        return 2
    if args.proxy_to:
        from selfguided.pipelines.serving.proxy import run_proxy

        return run_proxy(args, tracking_uri, _run_uvicorn)
    logger = None
    try:
        with tempfile.TemporaryDirectory(prefix="selfguided-serve-") as scratch:
            resolved = resolve_model(args.model_uri, tracking_uri, Path(scratch) / "download")
            name = args.served_model_name or resolved.name
            manifest = tm.read_manifest(resolved.model_dir)
            backend = _choose_backend(args.backend)
            where = (f"{resolved.source} ({manifest.display_name}, arm {manifest.arm}, strategy "
                     f"{manifest.strategy}) as `{name}` on http://{args.listen_host}:{args.port}/v1")
            try:
                if backend == "vllm":
                    merged = tm.export_merged(resolved.model_dir, Path(scratch) / "merged")
                else:
                    from selfguided.pipelines.serving.tracing import labels_for, start_logger

                    logger = start_logger(args, labels_for(resolved, name, args.deployment), tracking_uri)
                    app = create_app(resolved.model_dir, name, max_new_tokens=args.max_new_tokens, logger=logger)
            except (OSError, ValueError) as exc:  # e.g. a hub base model that cannot be fetched
                raise ServeError(f"cannot load {resolved.source}: {one_line(exc)}") from None
            if backend == "vllm":
                print(f"selfguided serve: {where} (vLLM; its answers are traced by a `--proxy-to` server in "
                      "front of it)", flush=True)
                import subprocess

                from selfguided.components.model.engines import vllm_command

                return subprocess.call(vllm_command(merged, name, host=args.listen_host, port=args.port,
                                                    max_new_tokens=args.max_new_tokens))
            print(f"selfguided serve: {where} (transformers on {app.state.generator.device}, one generation "
                  "at a time)", flush=True)
            return _run_uvicorn(app, args.listen_host, args.port)
    except ServeError as exc:
        print(f"selfguided serve: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if logger is not None:
            logger.close()


DESCRIPTION = (
    "Serve a registered model version or a trained model directory with an OpenAI-compatible API: "
    "GET /v1/models, POST /v1/chat/completions (streaming too), GET /health. vLLM when it is installed and a "
    "GPU is present, else a small transformers server (one generation at a time). Conversations are prompted "
    "as the model was trained; system messages are dropped."
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_uri", nargs="?", default=DEFAULT_MODEL_URI, metavar="MODEL_URI",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a trained model "
                        "directory (default: %(default)s)")
    add_option(parser, "--listen-host", old=("--host",), default="127.0.0.1",
               help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--served-model-name", help="the model name clients send (default: the registered "
                        "model's name, else the folder's)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help="answer length when a request sets no max_tokens (default: %(default)s; with vLLM "
                        "also the most a request gets)")
    add_tracking_uri(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="show download and weight-loading progress bars")
    parser.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto",
                        help="auto: vLLM when installed and a GPU is present, else transformers (default: auto)")
    parser.add_argument("--proxy-to", metavar="URL", help="serve no model: forward requests to this OpenAI-compatible "
                        "server (e.g. vLLM, a KServe predictor) and trace its answers; MODEL_URI then only names the "
                        "version for the traces")
    add_tracing_arguments(parser)
    parser.set_defaults(func=run_serve)


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Register `serve` on the `selfguided` command's subparsers."""
    parser = subparsers.add_parser(
        "serve", help="serve a model version (default: the champion) behind an OpenAI-compatible endpoint",
        description=DESCRIPTION)
    add_serve_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m selfguided.pipelines.serving.server [MODEL_URI] [options]`, the same as `selfguided serve`."""
    parser = argparse.ArgumentParser(prog="selfguided serve", description=DESCRIPTION)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
