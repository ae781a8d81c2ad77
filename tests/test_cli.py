"""The command line: version, help, the summary table and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.cli import main
from nectargan import __version__


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nectargan-bench {__version__}"


def test_profile_prints_layers_and_totals(capsys):
    assert main(["profile", "--n-downs", "4", "--features", "8", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "initial_down" in out and "final_up" in out and "ups.4" in out
    assert "457,931" in out  # total parameters of this variant
    assert "conv counts agree" in out and "yes" in out


def test_profile_deeper_table(capsys):
    assert main(["profile", "--n-downs", "3", "--features", "4", "--input-size", "32",
                 "--block-type", "ResidualUnetBlock", "--depth", "3"]) == 0
    out = capsys.readouterr().out
    assert "downs.0.residual.0" in out and "downs.0.conv.0" in out


def test_default_profile_total(capsys):
    assert main(["profile"]) == 0
    out = capsys.readouterr().out
    assert "54,404,675" in out and "12,096,372,736" in out and "6,060,064,768" in out


@pytest.mark.parametrize(
    ("args", "code", "pattern"),
    [
        (["profile", "--n-downs", "2"], 1, "n_downs=2 is not valid"),
        (["profile", "--input-size", "384"], 1, "input_size=384 is not valid"),
        (["profile", "--n-dwns", "3"], 2, "--n-downs"),
        (["profile", "--block-type", "Foo"], 1, "known blocks are 'UnetBlock', 'ResidualUnetBlock'"),
        (["profile", "--upconv-type", "bilinear"], 2, "Bilinear"),
        (["sweep", "nosuchgrid", "--static-only"], 1, "built-in grids: default, smoke"),
        (["sweep", "smoke", "--static-only", "--shard", "3/2"], 1, "--shard '3/2' is not valid"),
    ],
)
def test_bad_input_is_one_line(capsys, args, code, pattern):
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and pattern in err
    assert "Traceback" not in err


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "profile", "--features", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "features=0" in proc.stderr
