"""The typer application, its root options and the error policy.

Data goes to stdout, progress and logs to stderr. Known errors print one ``Error: ...`` line and exit
1 (2 for usage errors); ``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

import typer
from rich.console import Console

from cli import study as study_commands
from cli import sweep as sweep_commands
from cli import train as train_commands
from cli.options import INVOCATION
from cli.progress import stderr
from nectargan import __version__
from nectargan.errors import NectarGANError

try:  # typer >= 0.20 vendors click privately; older releases depend on click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

app = typer.Typer(
    name="nectargan-bench",
    help="Benchmark and search NectarGAN-style UNet generators.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stdout = Console()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nectargan-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Benchmark and search NectarGAN-style UNet generators."""


for module in (sweep_commands, train_commands, study_commands):
    for name, function in module.COMMANDS.items():
        app.command(name)(function)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning known errors into one line and a non-zero exit."""
    args = list(sys.argv[1:] if argv is None else argv)
    INVOCATION.command = shlex.join(["nectargan-bench", *args])
    debug = "--debug" in args
    if not [a for a in args if a != "--debug"]:  # no command: the help, as a usage error (exit 2)
        app(args=["--help"], prog_name="nectargan-bench", standalone_mode=False)
        return 2
    if debug:  # accepted anywhere on the line, not only before the command
        args = ["--debug", *[a for a in args if a != "--debug"]]
    try:
        result = app(args=args, prog_name="nectargan-bench", standalone_mode=False)
    except click_exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _one_line_error(f"{exc.format_message()}{hint}", code=2)
    except click_exceptions.ClickException as exc:
        return _one_line_error(exc.format_message(), code=exc.exit_code or 1)
    except typer.Abort:
        stderr.print("Aborted.")
        return 130
    except NectarGANError as exc:
        if debug:
            raise
        return _one_line_error(str(exc))
    except OSError as exc:
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        return _one_line_error(f"{exc.strerror or exc}{where}")
    except Exception as exc:  # the promise: never a traceback without --debug
        if debug:
            raise
        return _one_line_error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
    return result if isinstance(result, int) else 0


def _one_line_error(message: str, code: int = 1) -> int:
    text = " ".join(message.split())
    if len(text) > 400:
        text = text[:400] + "..."
    stderr.print(f"Error: {text}", markup=False, highlight=False, soft_wrap=True)
    return code
