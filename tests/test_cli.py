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


def test_summary_prints_layers_and_total(capsys):
    assert main(["summary", "--n-downs", "4", "--features", "8"]) == 0
    out = capsys.readouterr().out
    assert "initial_down" in out and "final_up" in out and "ups[4]" in out
    assert "457,931" in out  # total parameters of this variant


def test_default_summary_total(capsys):
    assert main(["summary"]) == 0
    assert "54,404,675" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "pattern"),
    [
        (["summary", "--n-downs", "2"], 1, "n_downs=2 is not valid"),
        (["summary", "--input-size", "384"], 1, "input_size=384 is not valid"),
        (["summary", "--n-dwns", "3"], 2, "--n-downs"),
        (["summary", "--block-type", "Foo"], 2, "UnetBlock"),
    ],
)
def test_bad_input_is_one_line(capsys, args, code, pattern):
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and pattern in err
    assert "Traceback" not in err


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "summary", "--features", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "features=0" in proc.stderr
