"""`voxgate serve | validate | check | schema | token | twiml`: the gateway's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from gateway import loader, protocol, reference
from gateway.errors import PipelineError, ProviderError
from gateway.telemetry import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxgate", description="Real-time voice AI gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve every pipeline in a folder")
    serve.add_argument(
        "--pipelines",
        action="append",
        help="pipeline folder or file (repeatable); default pipelines/",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--reload-pipelines", action="store_true", help="reload when a pipeline file changes"
    )
    serve.add_argument(
        "--max-sessions",
        type=int,
        help="sessions on this process, all routes (default: 50 per CPU, bench/README.md)",
    )
    serve.add_argument(
        "--max-connections-per-address",
        type=int,
        default=100,
        help="WebSockets one client address may hold (0: no limit, e.g. for a load test)",
    )
    serve.add_argument(
        "--max-unauthenticated",
        type=int,
        default=256,
        help="sockets on this process still without a session (each waits start_timeout_s)",
    )
    serve.add_argument(
        "--max-unauthenticated-per-address",
        type=int,
        default=16,
        help="sockets one client address may hold still without a session",
    )
    serve.add_argument(
        "--client-address-header",
        default=os.environ.get("VOXGATE_CLIENT_ADDRESS_HEADER"),
        help="header your proxy sets to the client's address (Fly.io: fly-client-ip); "
        "default: $VOXGATE_CLIENT_ADDRESS_HEADER, else the connection's address",
    )
    serve.add_argument(
        "--handshake-timeout",
        type=float,
        default=5.0,
        help="seconds a connection has to send its HTTP request head (slowloris)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=25.0,
        help=(
            "on SIGTERM, seconds to let calls finish their turn; up to 10 s of flushes follow "
            "(keep Fly's kill_timeout above both)"
        ),
    )
    validate = commands.add_parser("validate", help="check pipeline files and report every error")
    validate.add_argument("paths", nargs="*", default=["pipelines"])
    check = commands.add_parser(
        "check", help="validate, then say which pipelines this environment can serve"
    )
    check.add_argument("paths", nargs="*", default=["pipelines"])
    schema = commands.add_parser("schema", help="print the JSON Schema of a pipeline file")
    schema.add_argument(
        "--protocol", action="store_true", help="print the wire protocol's schema instead"
    )
    schema.add_argument(
        "--markdown", action="store_true", help="print the pipeline reference (docs/pipelines.md)"
    )
    token = commands.add_parser("token", help="mint a session token for a `mode: token` pipeline")
    token.add_argument(
        "--pipeline", required=True, help="pipeline name (the token's `pipeline` claim)"
    )
    token.add_argument("--pipelines", action="append", help="where to find it; default pipelines/")
    token.add_argument("--ttl", type=int, default=600, help="seconds until it expires")
    token.add_argument("--sub", help="the user it is for (`sub` claim)")
    twiml = commands.add_parser(
        "twiml", help="print the TwiML that connects a Twilio phone number to a pipeline"
    )
    twiml.add_argument("--pipeline", required=True, help="pipeline name (its `twilio` dialect)")
    twiml.add_argument("--pipelines", action="append", help="where to find it; default pipelines/")
    twiml.add_argument(
        "--host",
        required=True,
        help="where the gateway is reached: voice.example.com, or a wss:// URL",
    )
    twiml.add_argument(
        "--ttl",
        type=int,
        help="`auth.mode: token` only: seconds the embedded token opens calls for (required there)",
    )
    args = parser.parse_args(argv)

    if args.command == "validate":
        return loader.run_validate(args.paths, os.environ, sys.stdout, sys.stderr)
    if args.command == "check":
        return loader.run_check(args.paths, os.environ, sys.stdout, sys.stderr)
    if args.command == "schema" and args.protocol:
        print(json.dumps(protocol.json_schema(), indent=2, sort_keys=True))
        return 0
    if args.command == "schema" and args.markdown:
        print(reference.render(loader.json_schema()), end="")
        return 0
    if args.command == "schema":
        return loader.run_schema(sys.stdout)
    if args.command == "token":
        return _mint(args.pipelines or ["pipelines"], args.pipeline, args.ttl, args.sub)
    if args.command == "twiml":
        return _twiml(args.pipelines or ["pipelines"], args.pipeline, args.host, args.ttl)
    configure_logging()
    from gateway.capacity import Capacity, default_max_sessions
    from gateway.connections import ConnectionGuard
    from gateway.server import PortInUse
    from gateway.server import serve as run_server

    try:
        asyncio.run(
            run_server(
                args.pipelines or ["pipelines"],
                args.host,
                args.port,
                os.environ,
                args.reload_pipelines,
                Capacity(
                    max_sessions=args.max_sessions or default_max_sessions(),
                    max_unauthenticated=args.max_unauthenticated,
                    max_unauthenticated_per_address=args.max_unauthenticated_per_address,
                    max_sockets_per_address=args.max_connections_per_address,
                    address_header=args.client_address_header,
                ),
                ConnectionGuard(handshake_timeout_s=args.handshake_timeout),
                args.drain_timeout,
            )
        )
    except PipelineError as e:
        print(f"voxgate: cannot serve, pipeline files have errors:\n{e}", file=sys.stderr)
        return 1
    except PortInUse as e:
        print(f"voxgate: cannot serve: {e}", file=sys.stderr)
        return 1
    except ProviderError as e:  # a model (or SDK) that the start-up preload could not load
        print(f"voxgate: cannot serve: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _mint(sources: list[str], name: str, ttl_s: int, sub: str | None) -> int:
    from gateway.config import AuthMode
    from gateway.security import mint_token

    try:
        pipelines = loader.load_pipelines(loader.expand_paths(sources), os.environ)
    except PipelineError as e:
        print(f"voxgate: pipeline files have errors:\n{e}", file=sys.stderr)
        return 1
    pipeline = next((p for p in pipelines if p.name == name), None)
    if pipeline is None or pipeline.auth.mode is not AuthMode.TOKEN:
        known = ", ".join(p.name for p in pipelines if p.auth.mode is AuthMode.TOKEN) or "none"
        print(
            f"voxgate: no pipeline {name!r} with `auth.mode: token`; pipelines with it: {known}",
            file=sys.stderr,
        )
        return 1
    secret = pipeline.auth.resolved_secret(os.environ)
    if secret is None:
        print(
            f"voxgate: pipeline {name!r} has no secret: set {pipeline.auth.key_env} "
            "(at least 32 bytes: `openssl rand -hex 32`), as for the server",
            file=sys.stderr,
        )
        return 1
    print(mint_token(secret, name, ttl_s, sub))
    return 0


def _twiml(sources: list[str], name: str, host: str, ttl_s: int | None) -> int:
    """The `<Connect><Stream>` TwiML for a pipeline's `twilio` dialect, with a token minted in
    when the pipeline needs one (Twilio can send neither headers nor a query string)."""
    from gateway.config import AuthMode, Dialect
    from gateway.dialects.twilio import twiml
    from gateway.security import mint_token

    try:
        pipelines = loader.load_pipelines(loader.expand_paths(sources), os.environ)
    except PipelineError as e:
        print(f"voxgate: pipeline files have errors:\n{e}", file=sys.stderr)
        return 1
    pipeline = next((p for p in pipelines if p.name == name), None)
    if pipeline is None or Dialect.TWILIO not in pipeline.dialects:
        known = ", ".join(p.name for p in pipelines if Dialect.TWILIO in p.dialects) or "none"
        print(
            f"voxgate: no pipeline {name!r} with `twilio` in its `dialects`; pipelines with it: "
            f"{known}",
            file=sys.stderr,
        )
        return 1
    base = host.rstrip("/") if "://" in host else f"wss://{host.rstrip('/')}"
    token = None
    if pipeline.auth.mode is AuthMode.TOKEN:
        secret = pipeline.auth.resolved_secret(os.environ)
        if secret is None or ttl_s is None:
            print(
                f"voxgate: pipeline {name!r} needs a token in its TwiML: set "
                f"{pipeline.auth.key_env} as for the server and pass --ttl SECONDS (how long "
                "this TwiML may open calls; a TwiML Bin needs a long one, a TwiML webhook can "
                "mint one per call)",
                file=sys.stderr,
            )
            return 1
        token = mint_token(secret, name, ttl_s, "twilio")
    print(twiml(f"{base}{pipeline.route}/twilio", token), end="")
    return 0
