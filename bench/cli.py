"""The ``nectargan-bench`` command line: thin commands over the library.

Data goes to stdout, progress and logs to stderr. Known errors print one ``Error: ...`` line and exit
1 (2 for usage errors); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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
    context_settings={"help_option_names": ["-h", "--help"]},
)
stdout = Console()
stderr = Console(stderr=True)
_state = {"debug": False}


class BlockChoice(StrEnum):
    UnetBlock = "UnetBlock"
    ResidualUnetBlock = "ResidualUnetBlock"


class UpconvChoice(StrEnum):
    Transposed = "Transposed"
    Bilinear = "Bilinear"


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
    _state["debug"] = debug


@app.command()
def summary(
    n_downs: Annotated[int, typer.Option(help="Down layers between initial_down and the bottleneck.")] = 6,
    features: Annotated[int, typer.Option(help="Channels of the first layer (cap 8x).")] = 64,
    block_type: Annotated[BlockChoice, typer.Option(help="Block class.")] = BlockChoice.UnetBlock,
    upconv_type: Annotated[UpconvChoice, typer.Option(help="Upsampling.")] = UpconvChoice.Transposed,
    input_size: Annotated[int, typer.Option(help="Square input side in pixels.")] = 256,
    in_channels: Annotated[int, typer.Option(help="Input image channels.")] = 3,
    out_channels: Annotated[
        int | None, typer.Option(help="Output image channels [default: in-channels].")
    ] = None,
    use_dropout_layers: Annotated[int, typer.Option(help="Up layers with dropout, deepest first.")] = 3,
) -> None:
    """Print a generator's layers, channels, output shapes and parameters.

    Example: nectargan-bench summary --n-downs 4 --features 32 --block-type ResidualUnetBlock
    """
    from bench.summary import layer_summary
    from bench.variant import VariantSpec

    spec = VariantSpec(
        n_downs=n_downs, features=features, block_type=block_type.value,
        upconv_type=upconv_type.value, input_size=input_size, in_channels=in_channels,
        out_channels=out_channels, use_dropout_layers=use_dropout_layers,
    )
    rows = layer_summary(spec)
    table = Table(title=f"UnetGenerator {spec.name}", title_justify="left")
    for column, justify in [("layer", "left"), ("path", "left"), ("channels", "right"),
                            ("output shape", "right"), ("params", "right")]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(row.name, row.kind, f"{row.in_channels} -> {row.out_channels}",
                      "x".join(map(str, row.output_shape)), f"{row.params:,}")
    total = sum(row.params for row in rows)
    table.add_section()
    table.add_row("total", "", "", "", f"{total:,}")
    stdout.print(table)
    stdout.print(f"{total:,} parameters ({total * 4 / 2**20:.1f} MiB in fp32), {len(rows)} layers")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning known errors into one line and a non-zero exit."""
    args = sys.argv[1:] if argv is None else argv
    try:
        result = app(args=args, prog_name="nectargan-bench", standalone_mode=False)
    except click_exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        stderr.print(f"Error: {exc.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click_exceptions.ClickException as exc:
        stderr.print(f"Error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code or 1
    except typer.Abort:
        stderr.print("Aborted.")
        return 130
    except NectarGANError as exc:
        if _state["debug"] or "--debug" in args:
            raise
        message = " ".join(str(exc).split())
        stderr.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
