"""The GPU check's driver (run by scripts/gpu-check.sh): phases ordered by value, each with its own cap.

Each phase is one process group started in its own session. At its cap the group gets SIGINT (a sweep then
kills its measuring children and keeps every row it finished), and SIGKILL after a grace; any process still
carrying the phase's tag in its environment is killed too, so nothing outlives its phase. After every phase
``OUT/summary.json`` is rewritten: ``{"phases": [{"name", "status", "seconds", "rows", ...}]}`` with status
``done``, ``timed_out``, ``failed`` or ``skipped`` (the budget was spent). Rows are counted on disk.

Part 1 (the headline first): host, headline (the whole GAN step: eager and compile interleaved, NectarGAN's
loop), g-train, g-infer, profile (torch.profiler's top kernels of one compiled GAN step), family (eager),
pytest (a quick CUDA subset). Part 2: the trainer's fast path, a 2-trial study, the compile matrix.

``GPU_CHECK_DEVICE=cpu`` rehearses any part on this machine at tiny sizes (64 px, n_downs 3, f8, fp32);
``GPU_CHECK_PHASES=host,headline`` runs a subset (in the part's order); ``GPU_CHECK_BUDGET_S`` is the budget.
Standard library only: it runs before the project's dependencies are known to import.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = "NECTARGAN_GPU_CHECK_TAG"
GRACE_S = 15.0
MIN_PHASE_S = 10.0  # a phase with less than this left is skipped
# CPU rehearsal: every grid shrunk to this, and batches divided by 4 (at least 2).
TINY_GRID = {"n_downs": [3], "features": [8], "input_size": [64]}
TINY_MEASURE = {"device": "cpu", "precision": ["fp32"], "d_features": 8, "timeout_s": 120, "block_timeout_s": 30,
                "min_block_s": 0.05, "blocks": 3}


@dataclass
class Phase:
    name: str
    cap_s: float
    what: str
    grid: str | None = None  # a sweep of bench/grids/<grid>.toml into OUT/<name>
    command: list[str] = field(default_factory=list)  # otherwise this command (OUT and SIZE filled in)


PART1 = [
    Phase("host", 20, "nvidia-smi, versions"),
    Phase("headline", 170, "the whole GAN step, b16 bf16: eager and compile interleaved; NectarGAN's loop b16, b1",
          grid="reference-gpu-gan"),
    Phase("g-train", 90, "G alone, train b16 bf16: compile beside eager, NCHW and channels_last",
          grid="reference-gpu-g-train"),
    Phase("g-infer", 50, "G alone, inference b64 bf16 channels_last: compile beside eager",
          grid="reference-gpu-g-infer"),
    Phase("profile", 50, "torch.profiler: the top 20 kernels of one compiled GAN step",
          command=["-m", "cli", "trace", "--task", "gan_train", "--mode", "compile", "--out", "{OUT}/profile.md",
                   "{SIZE}"]),
    Phase("family", 50, "the four blocks x upconvs, eager, infer and train", grid="reference-gpu"),
    Phase("pytest", 45, "a quick CUDA subset: OOM and --max-batch, CUDA graphs, device labels, the GAN step eager",
          command=["-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-p", "no:cacheprovider", "-k",
                   "out_of_memory or max_batch or cuda_graphs or labels or one_visible_gpu or gan_step_eager"]),
]
PART2 = [
    Phase("host", 20, "nvidia-smi, versions"),
    Phase("trainer", 100, "the trainer's fast path: 60 steps of nectargan-bench train (compile, bf16, channels_last)",
          command=["-m", "cli", "train", "--data", "{DATA}", "--out", "{OUT}/trainer", "--steps", "60",
                   "--batch-size", "16", "--eval-every", "0", "{SIZE}"]),  # after the dataset (see run_phase)
    Phase("study", 110, "a 2-trial smoke study (the baseline, then its repeat with another seed)",
          command=["-m", "cli", "study", "smoke", "--storage", "sqlite:///{OUT}/study.db", "--n-trials", "2"]),
    Phase("compile-matrix", 230, "4 precisions x 2 layouts x infer/train, compile beside eager",
          grid="reference-gpu-layouts"),
]


@dataclass
class Result:
    name: str
    status: str
    seconds: float
    rows: int
    what: str
    cap_s: float
    started_s: float  # since the check started
    ended_s: float
    exit_code: int | None = None
    log: str = ""


def toml_value(value: object) -> str:
    """A TOML value for what grids hold: booleans, numbers, strings, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def write_grid(name: str, out: Path, cpu: bool) -> Path:
    """The grid as the check runs it: the check's one Inductor cache, never a warm-compile child; on the
    CPU, shrunk (see TINY_*)."""
    data = tomllib.loads((ROOT / "bench" / "grids" / f"{name}.toml").read_text())
    measure = dict(data.get("measure", {})) | {"warm_compile": False,
                                                 "inductor_cache": os.environ["TORCHINDUCTOR_CACHE_DIR"]}
    grid = dict(data.get("grid", {}))
    if cpu:
        grid |= TINY_GRID | {"batch_size": [max(2, b // 4) for b in grid.get("batch_size", [1])]}
        measure |= TINY_MEASURE
    lines = [f"description = {toml_value(data.get('description', name))}", "", "[grid]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in grid.items()]
    lines += ["", "[measure]", *(f"{k} = {toml_value(v)}" for k, v in measure.items())]
    path = out / "grids" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def count_rows(folder: Path) -> int:
    """Measured rows on disk in a run folder (a torn last line is not a row)."""
    try:
        lines = (folder / "results.jsonl").read_text().splitlines()
    except OSError:
        return 0
    rows = 0
    for line in lines:
        try:
            rows += json.loads(line).get("kind") == "measure"
        except json.JSONDecodeError:
            continue
    return rows


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``TAG=tag`` (Linux /proc; elsewhere none are found)."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return [pid for pid in found if pid != os.getpid()]


def kill_tagged(tag: str) -> int:
    pids = tagged_pids(tag)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


class Check:
    def __init__(self, out: Path, part: int, budget_s: float, cpu: bool, python: str, started: float) -> None:
        self.out, self.part, self.budget_s, self.cpu, self.python = out, part, budget_s, cpu, python
        self.started = started
        self.results: list[Result] = []
        self.run_id = uuid.uuid4().hex[:12]
        self.log = (out / "gpu-check.log").open("a")

    def elapsed(self) -> float:
        return time.time() - self.started

    def say(self, text: str) -> None:
        line = f"[gpu-check {self.elapsed():5.0f}s] {text}"
        print(line, file=sys.stderr, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def write_summary(self) -> None:
        summary = {"part": self.part, "device": "cpu" if self.cpu else "cuda", "budget_s": self.budget_s,
                   "elapsed_s": round(self.elapsed(), 1), "phases": [asdict(r) for r in self.results]}
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, self.out / "summary.json")

    def size_flags(self) -> list[str]:
        if self.cpu:
            return ["--n-downs", "3", "--features", "8", "--input-size", "64", "--device", "cpu", "--batch-size", "4",
                    "--d-features", "8"]
        return ["--device", "cuda"]

    def command(self, phase: Phase) -> list[str]:
        if phase.grid:
            grid = write_grid(phase.grid, self.out, self.cpu)
            return [self.python, "-m", "cli", "sweep", str(grid), "--out", str(self.out / phase.name), "--quiet"]
        args: list[str] = []
        for arg in phase.command:
            if arg == "{SIZE}":
                args += self.size_flags() if phase.name == "profile" else self.train_flags()
            else:
                args.append(arg.replace("{OUT}", str(self.out)).replace("{DATA}", str(self.out / "data")))
        return [self.python, *args]

    def train_flags(self) -> list[str]:
        if self.cpu:
            return ["--n-downs", "3", "--features", "8", "--input-size", "64", "--device", "cpu", "--d-features", "8"]
        return ["--device", "cuda", "--compile", "--precision", "bf16", "--channels-last"]

    def run_phase(self, phase: Phase) -> Result:
        start = self.elapsed()
        cap = min(phase.cap_s, self.budget_s - start)
        if cap < MIN_PHASE_S:
            self.say(f"{phase.name}: skipped, {max(0.0, self.budget_s - start):.0f} s of the budget left")
            return Result(phase.name, "skipped", 0.0, 0, phase.what, phase.cap_s, round(start, 1), round(start, 1))
        if phase.name == "host":
            return self.host(phase, start, cap)
        if phase.name == "trainer" and not (self.out / "data").is_dir():  # made once, from bundled photos
            subprocess.run([self.python, "-m", "cli", "dataset", "--task", "denoise", "--out",
                            str(self.out / "data"), "--size", "64" if self.cpu else "256", "--count", "200"],
                           cwd=ROOT, capture_output=True, timeout=max(1.0, cap))
        command = self.command(phase)
        log_path = self.out / f"{phase.name}.log"
        self.say(f"{phase.name}: start (cap {cap:.0f} s): {phase.what}")
        tag = f"{self.run_id}:{phase.name}"
        env = os.environ | {TAG: tag, "NECTARGAN_CUDA_CHILD_TIMEOUT_S": str(max(10, int(cap) - 5)),
                            "NECTARGAN_CUDA_QUICK": "1"}
        with log_path.open("w") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            status, code = "done", None
            try:
                code = proc.wait(timeout=cap)
            except subprocess.TimeoutExpired:
                status = "timed_out"
                self.stop(proc, tag)
                code = proc.returncode
            except BaseException:
                self.stop(proc, tag)
                raise
        left = kill_tagged(tag)  # a child that escaped its group (own session) goes too
        if left:
            self.say(f"{phase.name}: killed {left} process(es) still running")
        if status == "done" and code != 0:
            status = "failed"
        end = self.elapsed()
        rows = count_rows(self.out / phase.name) if phase.grid else 0
        self.say(f"{phase.name}: {status} in {end - start:.0f} s (exit {code}), {rows} measured rows on disk")
        return Result(phase.name, status, round(end - start, 1), rows, phase.what, phase.cap_s, round(start, 1),
                      round(end, 1), code, log_path.name)

    def stop(self, proc: subprocess.Popen, tag: str) -> None:
        """SIGINT to the phase's process group (a sweep keeps its rows and kills its children), then SIGKILL."""
        for sig, wait in ((signal.SIGINT, GRACE_S), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        kill_tagged(tag)

    def host(self, phase: Phase, start: float, cap: float) -> Result:
        self.say(f"host: recording nvidia-smi and versions (cap {cap:.0f} s)")
        status = "done"
        try:
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=min(10, cap))
            listing = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version,"
                                      "clocks.max.sm,power.limit", "--format=csv"], capture_output=True, text=True,
                                     timeout=min(10, cap))
            (self.out / "nvidia-smi.txt").write_text(smi.stdout + smi.stderr + listing.stdout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            (self.out / "nvidia-smi.txt").write_text(f"nvidia-smi: {exc}\n")
            status = "done" if self.cpu else "failed"
        try:
            versions = subprocess.run([self.python, str(ROOT / "scripts" / "gpu_check_versions.py")], cwd=ROOT,
                                      capture_output=True, text=True, timeout=max(1.0, cap - self.elapsed() + start))
            (self.out / "versions.txt").write_text(versions.stdout + versions.stderr)
            if versions.returncode != 0 or (not self.cpu and "cuda available True" not in versions.stdout):
                status = "failed"
        except subprocess.TimeoutExpired:
            status = "timed_out"
        end = self.elapsed()
        self.say(f"host: {status} in {end - start:.0f} s")
        return Result("host", status, round(end - start, 1), 0, phase.what, phase.cap_s, round(start, 1),
                      round(end, 1), None, "versions.txt")

    def run(self, phases: list[Phase]) -> int:
        for phase in phases:
            result = self.run_phase(phase)
            self.results.append(result)
            self.write_summary()
            if phase.name == "host" and result.status != "done":
                self.say("host: no usable device; the other phases are skipped")
                for rest in phases[1:]:
                    now = round(self.elapsed(), 1)
                    self.results.append(Result(rest.name, "skipped", 0.0, 0, rest.what, rest.cap_s, now, now))
                self.write_summary()
                break
        line = f"gpu-check part {self.part}: " + "; ".join(
            f"{r.name} {r.status}" + (f" ({r.rows} rows)" if r.rows else "") for r in self.results
        ) + f"; {self.elapsed():.0f} s of {self.budget_s:.0f}"
        (self.out / "summary.txt").write_text(line + "\n")
        self.say(line)
        print(self.out)
        return 0 if all(r.status == "done" for r in self.results) else 1


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the check as Ctrl-C does: the phase running is stopped cleanly


def _settings(part: int) -> tuple[float, list[Phase]]:
    """The budget and the phases from the environment, checked before anything is written."""
    text = os.environ.get("GPU_CHECK_BUDGET_S", "480")
    try:
        budget = float(text)
    except ValueError:
        budget = -1.0
    if not budget > 0:
        raise ValueError(f"GPU_CHECK_BUDGET_S={text!r} is not valid: give seconds > 0, e.g. 480")
    device = os.environ.get("GPU_CHECK_DEVICE", "cuda")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"GPU_CHECK_DEVICE={device!r} is not valid: use cuda (the default) or cpu (a rehearsal)")
    phases = PART1 if part == 1 else PART2
    only = [name for name in os.environ.get("GPU_CHECK_PHASES", "").split(",") if name]
    unknown = sorted(set(only) - {p.name for p in phases})
    if unknown:
        raise ValueError(f"GPU_CHECK_PHASES names {', '.join(unknown)}, not phases of part {part}: "
                         f"{', '.join(p.name for p in phases)}")
    # a subset keeps the part's order (a rehearsal, or a second try of what timed out)
    return budget, [p for p in phases if p.name in only] if only else phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", help="output folder (default results/gpu-check-<time>)")
    parser.add_argument("--part", type=int, choices=(1, 2), default=1)
    args = parser.parse_args(argv)
    try:
        budget, phases = _settings(args.part)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    cpu = os.environ.get("GPU_CHECK_DEVICE", "cuda") == "cpu"
    out = Path(args.out or ROOT / "results" / time.strftime("gpu-check-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = float(os.environ.get("GPU_CHECK_STARTED") or time.time())
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / "results" / "gpu-check-inductor-cache"))
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(os.cpu_count() or 1))
    check = Check(out, args.part, budget, cpu, os.environ.get("PYTHON", sys.executable), started)
    check.say(f"part {args.part} on {'the CPU (rehearsal)' if cpu else 'CUDA'}, budget {budget:.0f} s, OUT={out}, "
              f"Inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}")
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return check.run(phases)
    except KeyboardInterrupt:
        check.say("interrupted; summary.json holds the phases that ended")
        return 130


if __name__ == "__main__":
    sys.exit(main())
