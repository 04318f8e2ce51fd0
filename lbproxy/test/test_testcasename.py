"""
Tests that every module names its tests: Twisted's C{test-case-name}
header on its first line (read by C{trial --testmodule} and by editors),
naming test modules that exist.
"""

from __future__ import annotations

import importlib.util
import re

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.test.test_layout import _modules

_HEADER = re.compile(r"^# -\*- test-case-name: ([\w., ]+) -\*-")


class TestCaseNameTests(SynchronousTestCase):
    """
    A reader (and trial) can find the tests of every module.
    """

    def test_everyModuleNamesItsTests(self) -> None:
        """
        Each module of lbproxy (tests aside) starts with a test-case-name
        header, and every test module it names exists.
        """
        problems = []
        for name, path in sorted(_modules().items()):
            first = path.read_text().split("\n", 1)[0]
            match = _HEADER.match(first)
            if match is None:
                problems.append(f"{name}: no test-case-name header")
                continue
            for test in (t.strip() for t in match.group(1).split(",")):
                if importlib.util.find_spec(test) is None:
                    problems.append(f"{name}: names {test}, which does not exist")
        self.assertEqual(problems, [])

    def test_headerRead(self) -> None:
        """
        The header is read as trial reads it: comma-separated module names.
        """
        match = _HEADER.match("# -*- test-case-name: a.test_b, a.test_c -*-")
        assert match is not None
        self.assertEqual(match.group(1), "a.test_b, a.test_c")
