# -*- test-case-name: lbproxy.test.test_simulate -*-
"""
C{python -m lbproxy.simulate SCENARIO...}: run the choosers over shipped or
custom scenarios and print a table per scenario (and write a plot).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from lbproxy.balancing.registry import ChooserError
from lbproxy.simulate.engine import simulate
from lbproxy.simulate.report import formatTable, writePlot
from lbproxy.simulate.scenario import ScenarioError, builtinScenarios, loadScenario, readReplay


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lbproxy.simulate",
        description=(
            "Run lbproxy's choosers over simulated backends on a virtual clock and "
            "compare throughput, latency percentiles and shares. Deterministic: the "
            "same scenario and seed always print the same table."
        ),
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="a shipped scenario name, 'all', or a scenario .json file",
    )
    parser.add_argument("--list", action="store_true", help="list the shipped scenarios")
    parser.add_argument(
        "--chooser",
        action="append",
        metavar="NAME",
        help="chooser to run (repeatable; built-in, entry point or dotted name); "
        "default: the scenario's list",
    )
    parser.add_argument("--requests", type=int, metavar="N", help="override the request count")
    parser.add_argument("--seed", type=int, metavar="N", help="override the seed")
    parser.add_argument(
        "--replay",
        metavar="FILE",
        help="replay arrival times from FILE (lines 'SECONDS [CLIENT]') instead of "
        "the scenario's arrivals",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="write the plot here (.svg hand-written, .png needs matplotlib); with "
        "several scenarios the scenario name is added; default: SCENARIO.svg",
    )
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the simulator command line; return the exit status.
    """
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.list:
        for name in builtinScenarios():
            scenario = loadScenario(name)
            print(f"{name}: {scenario.description}")
        return 0
    names: list[str] = arguments.scenarios
    if not names:
        parser.error("name a scenario (or 'all'); --list shows them")
    if names == ["all"]:
        names = builtinScenarios()
    for name in names:
        try:
            scenario = loadScenario(name, arguments.requests)
            if arguments.seed is not None:
                scenario = attrs.evolve(scenario, seed=arguments.seed)
            if arguments.replay is not None:
                replay = readReplay(Path(arguments.replay))
                count = min(arguments.requests or len(replay.times), len(replay.times))
                scenario = attrs.evolve(scenario, arrivals=replay, requests=count)
            results = simulate(scenario, arguments.chooser)
        except (ScenarioError, ChooserError) as e:
            print(f"lbproxy.simulate: error: {e}", file=sys.stderr)
            return 2
        sys.stdout.write(formatTable(scenario, results) + "\n")
        if not arguments.no_plot:
            if arguments.plot is None:
                plot = Path(f"{scenario.name}.svg")
            elif len(names) > 1:
                given = Path(arguments.plot)
                plot = given.with_name(f"{given.stem}-{scenario.name}{given.suffix}")
            else:
                plot = Path(arguments.plot)
            try:
                writePlot(plot, scenario, results)
            except ImportError:
                print(
                    "lbproxy.simulate: error: PNG plots need matplotlib "
                    "(pip install 'lbproxy[simulate]'); use a .svg path instead",
                    file=sys.stderr,
                )
                return 2
            print(f"plot written to {plot}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
