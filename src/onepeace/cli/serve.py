"""``onepeace serve DB --model MODEL``: the HTTP service (embeddings API, search API, web page).

``onepeace serve --model MODEL`` (no DB) serves embeddings only: ``/v1/embeddings``, ``/health``,
``/v1/models`` and the page, which says search is off; ``/search`` answers 404 JSON.

Everything that can be wrong with the command line (no index at DB, a model that did not build it, a port in use) is one line and
exit 2 before the server starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import sys
import time
from typing import Any

from .. import OnePeace
from ..checkpoints.adapter import read_adapter_card
from ..errors import InputError, OnePeaceError
from ..model.precision import choose
from ..search.fingerprint import model_fingerprint, model_name, split_adapted_name
from ..search.store import Index, ModelMismatchError, is_remote
from .common import add_runtime_options, positive_int, runtime

API_KEY_ENV = "ONEPEACE_API_KEY"


def _port(text: str) -> int:
    n = positive_int(text) if text != "0" else 0
    if n > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {n}")
    return n


def _seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return x


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _model_spec(text: str) -> tuple[str | None, str]:
    """``--model [NAME=]MODEL``: (the name requests use, or None; the directory or hub id)."""
    name, sep, spec = text.partition("=")
    if not sep or os.path.exists(text):
        return None, text
    if not _NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"{name!r} is not a model name (letters, digits, '.', '_', '-'); "
                                         "give NAME=MODEL or MODEL")
    if not spec:
        raise argparse.ArgumentTypeError(f"{text!r}: no model after '='; give NAME=MODEL")
    return name, spec


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``serve``."""
    p = subparsers.add_parser(
        "serve", help="serve an index: OpenAI-compatible /v1/embeddings, /search and a web page (FastAPI)")
    p.add_argument("db", metavar="DB", nargs="?", default=None,
                   help="an index directory built by `onepeace index build` (leave it out with --model to serve "
                        "embeddings only, without search)")
    p.add_argument("--model", action="append", type=_model_spec, metavar="[NAME=]MODEL",
                   help="a model to serve: a directory or a hub id, optionally named (NAME=MODEL; requests pick it "
                        "by OpenAI's \"model\" field). Repeat it to serve several models; the first is the default. "
                        "With DB, one of them must be the model that built the index (default: the one recorded "
                        "in the index); without DB, embeddings only")
    p.add_argument("--adapter", action="append", type=_model_spec, metavar="[NAME=]DIR",
                   help="a LoRA adapter directory (`onepeace adapt --out DIR`) merged into the model on loading "
                        "(needs pip install 'onepeace[adapt]'); with several --model, NAME=DIR says which one "
                        "(serve a base and its adaptation side by side: --model base=M --model mine=M "
                        "--adapter mine=DIR). With DB and no --model: default the adapter the index was built with")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on the API (default: the {API_KEY_ENV} environment "
                        "variable, which keeps the key out of the process list; none: open)")
    p.add_argument("--max-batch", type=positive_int, default=16,
                   help="most inputs in one forward pass of the micro-batcher (1: one request at a time; default 16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its forward pass (default 5)")
    p.add_argument("--max-request-bytes", type=positive_int, default=16 * 1024 * 1024,
                   help="largest request body; larger ones get 413 (default 16 MiB)")
    p.add_argument("--timeout", type=_seconds, default=30.0,
                   help="seconds a request may take before it gets 408, the upload of its body included (a slower "
                        "upload is cut off and its connection closed); also the most seconds a connection may take "
                        "to send a request's line and headers (default 30)")
    p.add_argument("--max-queue", type=positive_int, default=1024,
                   help="most inputs waiting for a forward pass; past it requests get 503 with Retry-After "
                        "(default 1024)")
    p.add_argument("--max-in-flight", type=positive_int, default=256,
                   help="most requests served at once; past it requests get 503 with Retry-After (default 256)")
    add_runtime_options(p)
    p.set_defaults(func=cmd_serve)
    return p


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the model loads so a busy port is reported at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise InputError(f"--host {host!r}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        what = "is in use (another server?); pick another with --port" if e.errno in (98, 48) else e.strerror
        raise InputError(f"cannot listen on {host}:{port}: the port {what}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serving_dtype(dtype: str | None, device: str = "cpu") -> tuple[str | None, str]:
    """The precision ``serve`` loads the model in, and a note for the banner. ``auto`` never means
    int8 here: int8 quantises activations per forward pass, so a served row would change with the
    other requests in its micro-batch; the server promises batch-invariant rows, so ``auto``
    stands for bf16 where the CPU (or GPU) computes it natively, else fp32."""
    if dtype is None or str(dtype).strip().lower() != "auto":
        if str(dtype).strip().lower() == "int8":
            return "int8", "int8: rows depend on their micro-batch (not batch-invariant)"
        return dtype, ""
    picked = choose(device)
    if picked == "int8":
        return "fp32", "auto: fp32, not int8 (int8 rows would depend on their micro-batch)"
    return picked, f"auto: {picked}"


def load_model(spec: str, dtype: str | None = None, device: str = "cpu", adapter: str | None = None):
    """The model to serve, in the precision :func:`serving_dtype` picks (``model.serve_note`` says
    why; ``model.load_seconds`` how long loading took), with the LoRA ``adapter`` merged when given."""
    resolved, note = serving_dtype(dtype, device)
    t0 = time.perf_counter()
    model = OnePeace.from_pretrained(spec, dtype=resolved, device=device, **({"adapter": adapter} if adapter else {}))
    model.load_seconds = time.perf_counter() - t0
    model.serve_note = note
    return model


def load_served(db: str, model_spec: str | None, dtype: str | None = None, device: str = "cpu",
                adapter: str | None = None):
    """Open the index at ``db`` and load the model that built it (``model_spec`` or the index's
    own record, with the adapter it records unless ``adapter`` is given); a model whose
    fingerprint differs from the index's is refused, naming both."""
    index = Index.open(db)
    spec = model_spec or index.model_name
    if not model_spec and spec:
        spec, recorded = split_adapted_name(spec)
        adapter = adapter or recorded
    if not spec or spec.startswith("<"):
        raise InputError(f"{db} does not record a loadable model ({spec!r}); pass --model")
    model = load_model(spec, dtype, device, adapter)
    index.check_model(model_fingerprint(model), model_name(model) if adapter else spec)
    return model, index


def adapters_by_model(adapters: list[tuple[str | None, str]] | None, names: list[str]) -> dict[str, str]:
    """``--adapter [NAME=]DIR ...`` as {model name: adapter directory}, for the models ``names``
    (an unnamed adapter goes on the only model); each directory checked before any model loads."""
    out: dict[str, str] = {}
    for name, path in adapters or []:
        if name is None:
            if len(names) != 1:
                raise InputError(f"--adapter {path}: {len(names)} models are served; say which one it goes on "
                                 f"(--adapter NAME=DIR, NAME one of {', '.join(names)})")
            name = names[0]
        if name not in names:
            raise InputError(f"--adapter {name}={path}: no model is called {name!r} (the models: {', '.join(names)})")
        if name in out:
            raise InputError(f"--adapter: two adapters for the model {name!r}; give one")
        read_adapter_card(path)
        out[name] = path
    return out


def load_several(db: str | None, specs: list[tuple[str | None, str]], dtype: str | None = None,
                 device: str = "cpu", adapters: list[tuple[str | None, str]] | None = None) -> tuple[Any, Any]:
    """The models of ``--model [NAME=]MODEL ...`` (one model, or ``{name: model}`` for several)
    with the adapters of ``--adapter [NAME=]DIR ...``, and the index at ``db`` (or None). With an
    index, one of the models must have built it (its fingerprint), else the command is refused
    naming the index's model."""
    if len(specs) == 1 and specs[0][0] is None:
        adapter = adapters_by_model(adapters, ["model"]).get("model")
        if db is None:
            return load_model(specs[0][1], dtype, device, adapter), None
        return load_served(db, specs[0][1], dtype, device, adapter)
    names = [name or os.path.basename(os.path.normpath(spec)) for name, spec in specs]
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise InputError(f"--model: two models are called {dup!r}; name them (--model NAME=MODEL)")
    chosen = adapters_by_model(adapters, names)
    index = Index.open(db) if db is not None else None
    models = {n: load_model(spec, dtype, device, chosen.get(n)) for n, (_, spec) in zip(names, specs)}
    if index is not None and not any(model_fingerprint(m) == index.fingerprint for m in models.values()):
        raise ModelMismatchError(
            f"the index {db} was built with the model {index.model_name or '?'} (fingerprint "
            f"{index.fingerprint[:12]}), which none of the --model options is; add it (--model NAME={index.model_name})")
    return models, index


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise OnePeaceError(f"onepeace serve needs the serve extra ({e.name} is missing): "
                            "pip install 'onepeace[serve]'") from None
    if args.db is None and not args.model:
        raise InputError("nothing to serve: give an index (onepeace serve DB) or a model to serve embeddings only "
                         "(onepeace serve --model MODEL)")
    if args.db is not None and not is_remote(args.db) and not os.path.isdir(args.db):
        raise InputError(f"no index at {args.db}: build one with `onepeace index build {args.db} --model MODEL SOURCE...`")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if args.api_key == "":
        raise InputError("--api-key is empty; give a key, or leave the option out for an open server")
    device = runtime(args)
    sock = _bind(args.host, args.port)
    try:
        if not args.model:
            adapter = adapters_by_model(args.adapter, ["model"]).get("model")
            model, index = load_served(args.db, None, args.dtype, device, adapter)
        else:
            model, index = load_several(args.db, args.model, args.dtype, device, args.adapter)
        app = create_app(model, index, api_key=api_key, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         max_request_bytes=args.max_request_bytes, timeout_s=args.timeout, warmup=True,
                         max_queue=args.max_queue, max_in_flight=args.max_in_flight,
                         model_load_s=_load_seconds(model))
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        if index is None:
            what = "no index: embeddings only, search is off"
        else:
            counts = ", ".join(f"{n} {m}" for m, n in sorted(_counts(index).items()))
            what = f"index {args.db} ({counts or 'empty'})"
        print(f"onepeace serve: http://{shown}:{port}/ — {what}, {_banner_models(model)}; Ctrl-C stops",
              file=sys.stderr)
        if not _is_loopback(args.host) and api_key is None:
            print(f"onepeace serve: warning: listening on {args.host} without an API key: anyone who can reach "
                  f"this machine can use the service (set {API_KEY_ENV} or --api-key)", file=sys.stderr)
        from ..serve.app import head_deadline_protocol

        config = uvicorn.Config(app, log_level="info" if args.verbose else "warning", access_log=args.verbose,
                                timeout_graceful_shutdown=5, http=head_deadline_protocol(args.timeout))
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down cleanly, then re-raised it
            pass
        print("onepeace serve: stopped", file=sys.stderr)
    finally:
        sock.close()
    return 0


def _load_seconds(model: Any) -> float | None:
    models = list(model.values()) if isinstance(model, dict) else [model]
    times = [getattr(m, "load_seconds", None) for m in models]
    return None if None in times else float(sum(times))


def _banner_models(model: Any) -> str:
    def one(m: Any) -> str:
        precision = getattr(m, "serve_note", "") or getattr(m, "precision", None)
        name = getattr(m, "name_or_path", None) or "?"
        if getattr(m, "adapter_dir", None):
            name += f" + adapter {m.adapter_dir}"
        return f"{name}{f' ({precision})' if precision else ''}"

    if not isinstance(model, dict):
        return f"model {one(model)}"
    return "models " + ", ".join(f"{name}={one(m)}" for name, m in model.items())


def _counts(index: Any) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in index.modality_counts().items()}
    except Exception:  # noqa: BLE001 - the banner is informative only
        return {}
