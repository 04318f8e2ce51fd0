# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
The one error of the balancing package: a chooser name or setting that
names nothing usable.
"""

from __future__ import annotations


class ChooserError(ValueError):
    """
    A C{--chooser} value (or a chooser setting) names nothing usable; the
    message says why, on one line.
    """


__all__ = ["ChooserError"]
