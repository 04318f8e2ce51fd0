"""
The installed twistd knows the lbproxy plugin and documents its options.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import TestCase

from tests.support import runProgram, twistdPath

OPTIONS = {
    # option: its default value, or None for flags, for the required
    # --backends, and for options whose default is a behaviour (their help
    # must still say what it is).
    "--backends": None,
    "--listen": "ssl:443 with certs/loadbalancer.key and certs/loadbalancer.crt",
    "--adhoc": None,
    "--chooser": "random",
    "--allow-host": None,
    "--timeout": "30",
    "--connect-timeout": "5",
    "--max-body": "100M",
    "--access-log": None,
    "--demo": None,
}

FLAGS = ("--adhoc", "--demo")


def _squash(text: str) -> str:
    """
    C{text} without any whitespace, so that line wrapping does not matter.
    """
    return "".join(text.split())


def _optionHelp(usage: str) -> dict[str, str]:
    """
    The help text of each long option in C{usage}, by option name.
    """
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in usage.splitlines():
        match = re.match(r"^ {2,6}(?:-\w, )?(--[\w-]+)=?(.*)$", line)
        if match:
            current = blocks.setdefault(match.group(1), [])
            current.append(match.group(2))
        elif current is not None and line.startswith(" "):
            current.append(line)
        else:
            current = None
    return {name: " ".join(lines) for name, lines in blocks.items()}


class PluginTests(TestCase):
    """
    C{twistd --help} and C{twistd lbproxy --help}.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    async def test_twistdListsPlugin(self) -> None:
        """
        C{twistd --help} lists the C{lbproxy} command.
        """
        result = await runProgram([twistdPath(), "--help"], self.directory)
        self.assertEqual(result.code, 0, result)
        self.assertRegex(result.out, re.compile(r"^\s+lbproxy\s+\S", re.MULTILINE))

    async def test_helpListsOptions(self) -> None:
        """
        C{twistd lbproxy --help} lists every option, with the defaults of
        those that have one.
        """
        result = await runProgram([twistdPath(), "lbproxy", "--help"], self.directory)
        self.assertEqual(result.code, 0, result)
        helps = _optionHelp(result.out)
        for option, default in OPTIONS.items():
            self.assertIn(option, helps)
            text = _squash(helps[option]).lower()
            if default is not None:
                self.assertIn("default:" + _squash(default).lower(), text)
            elif option not in FLAGS and option != "--backends":
                self.assertIn("default", text)
