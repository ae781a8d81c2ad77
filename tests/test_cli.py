"""The command line: version, help, the summary table and one-line errors."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from cli import main
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
        (["sweep", "nosuchgrid", "--static-only"], 1, "built-in grids: default, "),
        (["sweep", "smoke", "--static-only", "--shard", "3/2"], 1, "shard '3/2' is not valid"),
    ],
)
def test_bad_input_is_one_line(capsys, args, code, pattern):
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and pattern in err
    assert "Traceback" not in err


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "profile", "--features", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "features=0" in proc.stderr


def test_dataset_and_train_commands(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["dataset", "--task", "gray2color", "--out", str(data), "--size", "32", "--count", "12"]) == 0
    assert len(list((data / "train").glob("*.png"))) == 10
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--input-size", "32", "--n-downs", "3",
                 "--features", "4", "--steps", "6", "--batch-size", "2", "--eval-every", "3"]) == 0
    err = capsys.readouterr().err
    assert "6 steps" in err and "val L1" in err
    assert (out / "metrics.csv").exists() and (out / "netG.pth.tar").exists()


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["dataset", "--task", "gray2color", "--out", "X", "--size", "8"], "size=8 is not valid"),
        (["train", "--data", "X", "--out", "Y"], "give a budget"),
        (["train", "--data", "/nonexistent", "--out", "Y", "--steps", "1"], "/nonexistent does not exist"),
        (["train", "--data", "X", "--out", "Y", "--steps", "1", "--n-downs", "2"], "n_downs=2 is not valid"),
    ],
)
def test_train_and_dataset_errors(capsys, args, pattern):
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and pattern in err and err.count("\n") == 0


def test_train_on_missing_cuda_is_one_line(tmp_path, capsys, sample_dataset):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--data", str(sample_dataset), "--out", str(tmp_path / "r"), "--steps", "1",
                 "--input-size", "64", "--n-downs", "3", "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_os_errors_and_unexpected_errors_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sweep", "smoke", "--static-only", "--out", str(blocker / "sub"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and err.count("\n") == 0 and "Traceback" not in err


def test_debug_is_accepted_after_the_command(capsys):
    with pytest.raises(Exception, match="n_downs=2"):
        main(["profile", "--n-downs", "2", "--debug"])


def test_help_shows_where_output_goes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside the help's boxes
    assert main(["sweep", "--help"]) == 0
    out = capsys.readouterr().out
    assert "results/runs/<grid>-<timestamp>" in out


def test_study_detach_help_points_to_what_follows_a_study(capsys):
    from cli import main

    assert main(["study", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    detach = text[text.index("--detach"):][:300]
    assert "dashboard" in detach and "study-report" in detach and "scancel" in detach and "collect" not in detach


def test_ctrl_c_while_torch_is_imported_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C in the first seconds of a command (importing torch) used to print a traceback."""
    import signal
    import subprocess
    import sys
    import time

    from cli import INTERRUPTED_AT_START

    proc = subprocess.Popen([sys.executable, "-m", "cli", "train", "--data", str(tmp_path), "--steps", "1",
                             "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # the moment torch's shared library is mapped the process is inside `import torch` (on a warm page cache the
    # whole import can take under 0.5 s, so a fixed sleep missed it and the command ran on)
    maps = pathlib.Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while "libtorch" not in (maps.read_text() if maps.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, "the command ended before it imported torch"
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == INTERRUPTED_AT_START and out == ""
    assert not (tmp_path / "run").exists()
