"""
Paired runs: two versions of lbproxy measured alternately on the same
set-up, for changes smaller than the noise between two `bench/run`s (a
`bench/run` figure moves 2-4 % from run to run; a pair, taken a few
seconds apart, moves much less).

    bench/.venv/bin/python bench/paired.py HEAD~1 HEAD --scenarios A,B --pairs 3

Each version is a commit (or `worktree` for the checkout as it is),
installed once into its own venv under `bench/.paired/` with the same
dependency versions as `bench/.venv` (so run `bench/run --quick` once
first). Then, for each scenario and each pair, the two are started one
after the other on CPU 0, with wrk and the two nginx backends of
`bench/run` on CPU 1, and measured as `bench/run` measures A-D: a warm-up,
then wrk for `--duration` seconds, the contender's CPU time over the
requests served. Prints CPU µs per request and req/s of each run, and the
median of each version. Every address is on loopback; every process it
starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import driver
from driver import (
    BenchError,
    Running,
    World,
    contenderArgv,
    log,
    makeWorld,
    measure,
    spawn,
    startBackends,
    stopAll,
    stoppedOnSignals,
    waitListening,
    waitPortsFree,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".paired"
WORKTREE = "worktree"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def install(version: str) -> Path:
    """
    A venv with lbproxy at C{version} (a commit, or L{WORKTREE}), made once
    per commit; the work tree is installed again each time.

    @return: The venv's C{bin} directory.
    """
    name = WORKTREE if version == WORKTREE else _git("rev-parse", "--short=12", version)
    venv = VENVS / name
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"making a venv for {version} in {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        frozen = subprocess.run(
            [sys.executable, "-m", "pip", "freeze", "--exclude", "lbproxy"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        constraints = venv / "constraints.txt"
        constraints.write_text(frozen)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(constraints)], check=True
        )
    elif version != WORKTREE:
        return venv / "bin"
    with tempfile.TemporaryDirectory(prefix="lbpaired-") as source:
        if version == WORKTREE:
            src = str(ROOT)
        else:
            archive = Path(source) / "src.tar"
            _git("archive", "-o", str(archive), version)
            with tarfile.open(archive) as tar:
                tar.extractall(Path(source) / "src", filter="data")
            src = str(Path(source) / "src")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", src],
            check=True,
        )
    subprocess.run(["rm", "-rf", str(ROOT / "build")], check=True)
    return venv / "bin"


def start(binDir: Path, world: World) -> Running:
    """
    lbproxy as `bench/run` starts it, from the venv C{binDir}.
    """
    waitPortsFree()
    ((procName, argv),) = contenderArgv("lbproxy", world)
    argv = [str(binDir / "twistd"), *argv[1:]]
    proc = spawn(procName, argv, world.logs / f"{procName}.log", driver.CONTENDER_CPU)
    running = Running("lbproxy", [proc])
    try:
        waitListening([proc], [(driver.HOST, driver.TLS_PORT), (driver.HOST, driver.PLAIN_PORT)])
    except BaseException:
        running.stop()
        raise
    return running


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/paired.py", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument("before", help="a commit, or 'worktree'")
    parser.add_argument("after", help="a commit, or 'worktree'")
    parser.add_argument("--scenarios", default="A,B", help="of A, B, C, D (default A,B)")
    parser.add_argument("--pairs", type=int, default=3, help="pairs per scenario (default 3)")
    parser.add_argument("--duration", type=float, default=6, help="seconds measured (default 6)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up (default 2)")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in driver.WRK_SCENARIOS]
    if unknown:
        raise BenchError(f"paired runs measure A-D, not {','.join(unknown)}")
    versions = {"before": install(args.before), "after": install(args.after)}
    driver.refuseTakenPorts()
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="lbpaired-") as tmpName, stoppedOnSignals():
        world = makeWorld(Path(tmpName), driver.MiB)
        startBackends(world)
        try:
            for scenario in scenarios:
                for pair in range(1, args.pairs + 1):
                    for label, binDir in versions.items():
                        running = start(binDir, world)
                        try:
                            result, cpu = measure(scenario, running, args, world)
                        finally:
                            running.stop()
                        perRequest = cpu / max(result.requests, 1) * 1e6
                        results.setdefault((scenario, label), []).append(perRequest)
                        log(
                            f"{scenario} pair {pair} {label:6} {result.rps:9.0f} req/s "
                            f"{perRequest:6.1f} µs/req  p99 {result.p99:.2f} ms"
                        )
        finally:
            stopAll()
    print(f"\nbefore = {args.before}, after = {args.after}; CPU µs per request, median of pairs")
    for scenario in scenarios:
        before = statistics.median(results[(scenario, "before")])
        after = statistics.median(results[(scenario, "after")])
        print(
            f"{scenario}: {before:.1f} -> {after:.1f} ({(after - before) / before:+.1%}); "
            f"before {sorted(round(x, 1) for x in results[(scenario, 'before')])}, "
            f"after {sorted(round(x, 1) for x in results[(scenario, 'after')])}"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"bench/paired.py: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench/paired.py: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
