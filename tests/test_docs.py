"""
The operator's manual agrees with the program: every option in
C{twistd lbproxy --help} is in docs/operations.md's table, with the default
that C{--help} prints.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import TestCase

from tests.support import runTwistd, startTwistd

_TABLE = os.path.join(os.path.dirname(__file__), "..", "docs", "operations.md")
_ENTRY = re.compile(r"^ {2}(?:-\w, )?--([\w-]+)|^ {6}--([\w-]+)")


def helpDefaults(text: str) -> dict[str, str | None]:
    """
    Each option of a twistd C{--help} text, with its default (whitespace
    removed, since the help wraps long values mid-word), or L{None}.
    """
    options: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = _ENTRY.match(line)
        if match:
            current = match.group(1) or match.group(2)
            options[current] = line
        elif current is not None and line.startswith(" " * 31):
            options[current] += "\n" + line
    defaults: dict[str, str | None] = {}
    for name, entry in options.items():
        found = re.search(r"\[default:\s*(.*?)\]\s*$", entry, re.S)
        defaults[name] = re.sub(r"\s+", "", found.group(1)) if found else None
    return defaults


def documentedDefaults(path: str) -> dict[str, str]:
    """
    The options table of C{path}: option name to its default cell (a cell
    naming two options, C{`--a N` / `--b N`}, holds two defaults, C{1 / 2}).
    """
    documented: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.replace("\\|", "\0").split("|")[1:-1]]
            if len(cells) < 2 or not cells[0].startswith("`--"):
                continue
            options = [o.strip().strip("`").split()[0][2:] for o in cells[0].split(" / ")]
            defaults = [d.strip().strip("`") for d in cells[1].split(" / ")]
            if len(defaults) != len(options):
                defaults = [cells[1].strip("`")] * len(options)
            documented.update(zip(options, defaults, strict=True))
    return documented


class OptionsTableTests(TestCase):
    """
    docs/operations.md's options table against the installed program.
    """

    async def test_tableMatchesHelp(self) -> None:
        """
        Every option C{--help} lists is in the table, and each default the
        help prints is the table's.
        """
        result = await runTwistd(["--help"], ".")
        self.assertEqual(result.code, 0, result.combined)
        helped = helpDefaults(result.out)
        self.assertGreater(len(helped), 40, result.out)
        documented = documentedDefaults(_TABLE)
        missing = sorted(set(helped) - set(documented) - {"help", "version"})
        self.assertEqual(missing, [], "options --help lists that the table does not")
        wrong = [
            f"--{name}: --help says {default!r}, the table says {documented[name]!r}"
            for name, default in sorted(helped.items())
            if default is not None and re.sub(r"\s+", "", documented[name]) != default
        ]
        self.assertEqual(wrong, [])

    def test_helpParsed(self) -> None:
        """
        Wrapped entries and defaults are read whole.
        """
        text = (
            "Options:\n"
            "      --listen=                Where (repeatable). [default: ssl:443:privateKey=c\n"
            "                               erts/k.key]\n"
            "  -b, --backends=              Comma-separated.\n"
            "      --timeout=               Seconds. [default: 30]\n"
        )
        self.assertEqual(
            helpDefaults(text),
            {"listen": "ssl:443:privateKey=certs/k.key", "backends": None, "timeout": "30"},
        )


class ExampleConfigTests(TestCase):
    """
    docs/examples/lbproxy.toml, the commented example the configuration
    manual points to, starts the installed program.
    """

    async def test_exampleStarts(self) -> None:
        """
        The example file is valid: with its certificate-bound listener and
        its admin port replaced by free ones, twistd lbproxy starts from it
        and serves the pool it names.
        """
        example = os.path.abspath(
            os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "lbproxy.toml")
        )
        process = await startTwistd(
            self,
            [
                "--config",
                example,
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--admin",
                "tcp:0:interface=127.0.0.1",
            ],
            ".",
        )
        self.assertIn("pool web", process.out)
