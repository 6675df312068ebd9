"""The `flywheel` command. Each subcommand imports what it needs only when it runs: the light
install (`pip install flywheel`) has the language server; the rest is the [server] extra."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.config_file import ConfigError

if TYPE_CHECKING:
    from core.config import Settings

# Top-level packages of this distribution: a missing one is a broken install, not a missing extra.
OUR_PACKAGES = {"core", "flywheel", "lsp_server", "backend", "trainer", "simulate", "bench"}
# What each extra brings that a subcommand may miss; anything else comes with [server].
EXTRA_OF = {"aiohttp": "bench"}


class _Version(argparse.Action):
    """--version, looked up only when asked: `flywheel lsp` starts without reading package metadata."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the installed version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib import metadata

        try:
            version = metadata.version("flywheel")
        except metadata.PackageNotFoundError:  # run from a checkout that was never installed
            version = "unknown (not installed)"
        print(f"flywheel {version}")
        parser.exit()


def _settings() -> Settings:
    from core.config import load_settings

    return load_settings()


def cmd_lsp(args: argparse.Namespace) -> int:
    from lsp_server.server import main

    main()
    return 0


def cmd_backend(args: argparse.Namespace) -> int:
    from backend.main import serve

    settings = _settings()
    if args.host:
        settings.backend.host = args.host
    if args.port:
        settings.backend.port = args.port
    serve(settings)
    return 0


def cmd_trainer(args: argparse.Namespace) -> int:
    from trainer.loop import run

    return run(_settings(), once=args.once)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from trainer.bootstrap import main

    settings = _settings()
    output = args.output or settings.default_model_dir
    return main(
        output=output,
        corpus=args.corpus,
        budget_s=args.budget_minutes * 60,
        size=args.size,
        include_stdlib=not args.no_stdlib,
        force=args.force,
    )


def cmd_up(args: argparse.Namespace) -> int:
    from flywheel.up import up

    # Through the environment, so the backend and trainer `up` starts read them too.
    if args.host:
        os.environ["FLYWHEEL_BACKEND__HOST"] = args.host
    if args.port:
        os.environ["FLYWHEEL_BACKEND__PORT"] = str(args.port)
    if args.engine:
        os.environ["FLYWHEEL_SERVING__ENGINE"] = args.engine
    return up(_settings(), bootstrap_budget_s=args.bootstrap_minutes * 60, allow_fallback=args.allow_fallback)


def cmd_bench(args: argparse.Namespace) -> int:
    # The benchmarks are a package beside the product (bench/), imported only here: nothing of the
    # product imports them, and their load generator's aiohttp is an extra.
    if args.suite == "build-model":
        from bench.model_shapes import main as build

        return build(args.rest)
    from bench.report import main

    return main(_settings(), args.suite, args.rest)


def cmd_token(args: argparse.Namespace) -> int:
    from backend.tokens import main

    return main(_settings(), args.rest)


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulate.run import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("lsp", help="run the language server on stdio (editors start this)")
    # Many LSP clients (vscode-languageclient's stdio transport among them) pass --stdio.
    p.add_argument("--stdio", action="store_true", help="accepted and ignored: stdio is the only transport")
    p.set_defaults(func=cmd_lsp)

    p = sub.add_parser("backend", help="run the backend service")
    p.add_argument("--host", help="address to listen on (default: backend.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: backend.port, 8765)")
    p.set_defaults(func=cmd_backend)

    p = sub.add_parser("trainer", help="run the online RL trainer against the backend")
    p.add_argument("--once", action="store_true", help="run one cycle and exit")
    p.set_defaults(func=cmd_trainer)

    p = sub.add_parser("bootstrap", help="train the small default base model from local Python sources")
    p.add_argument("--corpus", type=Path, action="append", default=[], help="extra source directory")
    p.add_argument("--no-stdlib", action="store_true", help="do not train on the standard library")
    p.add_argument("--output", type=Path, help="model directory (default: under the data dir)")
    p.add_argument("--budget-minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--size", default="small", help="model size preset: tiny, small")
    p.add_argument("--force", action="store_true", help="rebuild even if the model exists")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("up", help="start backend and trainer together, bootstrapping the model if needed")
    p.add_argument("--host", help="address the backend listens on (default: backend.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port the backend listens on (default: backend.port, 8765)")
    p.add_argument(
        "--bootstrap-minutes",
        type=float,
        default=10.0,
        help="training budget for the default model when there is none yet (first run only; default 10)",
    )
    p.add_argument(
        "--allow-fallback",
        action="store_true",
        help="serve the bootstrapped model when the configured model.name cannot be had (demos only:"
        " without it such a model stops `up` with the reason)",
    )
    p.add_argument(
        "--engine",
        choices=["inprocess", "vllm"],
        help="what decodes completions (default: serving.engine, inprocess): vllm starts a vLLM server"
        " from serving.vllm_python (make vllm-env), or uses serving.vllm_urls",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "bench",
        help="run benchmarks and print their figures; with `all` or --out, a JSON report and a table",
    )
    p.add_argument(
        "suite",
        choices=["lsp", "backend", "trainer", "faults", "serving", "store", "all", "build-model"],
        help="a suite to run, or build-model: a random model of a real one's shape (--shape, --out DIR)",
    )
    p.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        help="--out PATH (the JSON report), --quick (small sizes), --model M, and the suite's own options",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("simulate", help="simulated developers drive the real loop; learning curves out")
    p.add_argument(
        "--corpus",
        type=Path,
        help="directory of Python files they write (default: the bootstrapped model's held-out files)",
    )
    p.add_argument("--cycles", type=int, default=10, help="trainer cycles")
    p.add_argument("--developers", type=int, default=4, help="simulated developers, each with a token")
    p.add_argument("--adversarial-share", type=float, help="share accepting then deleting all (default 0.25)")
    p.add_argument(
        "--attacker",
        choices=["quiet", "many_ids", "adversarial"],
        help="one attacker person (one token) among --developers, at --attacker-share of training requests",
    )
    p.add_argument("--attacker-share", type=float, default=0.4, help="its share of the training requests")
    p.add_argument("--model", type=Path, help="model directory (default: the bootstrapped model)")
    p.add_argument("--out", type=Path, default=Path("flywheel-simulation"), help="CSV, plot, logs, state")
    p.add_argument("--seed", type=int, default=0, help="seed of the developers' choices")
    p.add_argument("--files-per-round", type=int, default=2, help="files each developer writes per round")
    p.add_argument("--eval-files", type=int, default=0, help="held-out files (default: files per round)")
    p.add_argument(
        "--eval-rounds", type=int, default=1, help="evaluation rounds a cycle, same files, other seeds"
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=1,
        help="evaluate cycle 0, every Nth cycle and the last; the others only train (long runs)",
    )
    p.add_argument("--max-lines", type=int, default=120, help="cut each file to this many lines (0: all)")
    p.add_argument(
        "--requests-per-file", type=int, default=40, help="most suggestions one developer asks for in a file"
    )
    p.add_argument("--time-scale", type=float, default=50.0, help="simulated typing seconds per real second")
    p.add_argument(
        "--compare-floors",
        action="store_true",
        help="evaluate each cycle twice: the version's own show rule, then its confidence floors",
    )
    p.add_argument(
        "--plot-only",
        nargs="+",
        metavar=("PNG", "DIR"),
        help="draw finished runs (their --out directories) into one PNG and exit; runs nothing",
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("token", help="create, list or revoke access tokens (admin)")
    p.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        help="create [--role client|admin|metrics] [--name NAME], list, or revoke ID"
        " (flywheel token create --help)",
    )
    p.set_defaults(func=cmd_token)

    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # httpx says every request at INFO: the trainer's poll of the backend, every 10 s, filled the
    # output of `flywheel up`. Failures are logged by whoever made the request.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code = args.func(args)
    except ModuleNotFoundError as missing:
        top = (missing.name or "").partition(".")[0]
        if not top or top in OUR_PACKAGES:
            raise
        extra = EXTRA_OF.get(top, "server")
        sys.exit(
            f"flywheel {args.command}: {top} is not installed; this command needs the {extra} extra:"
            f" pip install 'flywheel[{extra}]'"
        )
    except ConfigError as error:
        sys.exit(f"flywheel: {error}")
    sys.exit(code)


if __name__ == "__main__":
    main()
