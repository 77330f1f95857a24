"""The `lmfusion` command line: thin Typer commands, one stage function each.

Exit codes: 0 success, 2 bad input (one sentence on stderr; traceback with --verbose), 1 otherwise."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from lmfusion_cli import __version__
from lmfusion_cli.commands import encode_latents, evaluate, export, plan, prepare, sample, train
from lmfusion_cli.common.errors import UserError

app = typer.Typer(
    name="lmfusion",
    help="Give a pretrained text-only LLM image understanding and generation (LMFusion).\n\n"
    "Stages: prepare → encode-latents → train → sample → evaluate → export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmfusion {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and full tracebacks.")] = False,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    from lmfusion_cli.common.logs import setup_logging

    if verbose:
        os.environ["LMFUSION_VERBOSE"] = "1"
    if quiet:
        os.environ["LMFUSION_QUIET"] = "1"
    setup_logging(quiet=quiet, verbose=verbose)


for _name, _module in (
    ("prepare", prepare),
    ("encode-latents", encode_latents),
    ("train", train),
    ("plan", plan),
    ("sample", sample),
    ("evaluate", evaluate),
    ("export", export),
):  # a config command's epilog lists every config key (commands/common.py)
    app.command(_name, epilog=getattr(_module.command, "epilog", None))(_module.command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning a UserError into one sentence and exit code 2.

    Click's usage errors (unknown option, bad value) become the same one `error:` line with exit code 2
    (issue 17; click alone prints a 4-line block)."""
    try:  # typer >= 0.25 vendors click as typer._click; older ones raise click's own exceptions
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors

    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as e:
        if os.environ.get("LMFUSION_VERBOSE") == "1":
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click_errors.NoArgsIsHelpError as e:
        e.show()
        sys.exit(e.exit_code)
    except click_errors.ClickException as e:
        print(f"error: {_usage_sentence(e)}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _usage_sentence(e) -> str:
    """A click error as one sentence naming the command and the fix."""
    message = " ".join(e.format_message().split()).rstrip(".")
    command = getattr(getattr(e, "ctx", None), "command_path", None) or "lmfusion"
    return f"{message} (in `{command}`); see `{command} --help` for the options"


if __name__ == "__main__":
    main()
