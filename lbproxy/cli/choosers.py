# -*- test-case-name: lbproxy.test.test_clichoosers -*-
"""
The chooser options of C{twistd lbproxy} (C{--hash-key},
C{--hash-balance-factor}, C{--sticky-cookie}, C{--sticky-fallback},
C{--sticky-secret-file}) turned into L{ChooserSettings}. The balancing
package knows no flag names and opens no files; the sticky secret file is
read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lbproxy.balancing.hash import HashSettings
from lbproxy.balancing.registry import ChooserError, ChooserSettings, checkSettings
from lbproxy.balancing.sticky import StickySettings


def readSecret(path: str) -> bytes:
    """
    The sticky cookie secret held in the file at C{path}, without
    surrounding white space.

    @raise ChooserError: If the file cannot be read, naming the option.
    """
    try:
        with open(path, "rb") as secretFile:
            return secretFile.read().strip()
    except OSError as e:
        raise ChooserError(f"cannot read --sticky-secret-file {path!r}: {e.strerror}") from None


def settingsFromOptions(options: Mapping[str, Any]) -> ChooserSettings:
    """
    L{ChooserSettings} from the C{twistd lbproxy} options C{hash-key},
    C{hash-balance-factor}, C{sticky-cookie}, C{sticky-fallback} and
    C{sticky-secret-file} (whose file is read now).

    @raise ChooserError: For a value that is not understood, or a secret
        file that cannot be read.
    """
    factorText = options["hash-balance-factor"]
    try:
        factor = float(factorText)
    except ValueError:
        raise ChooserError(
            f"--hash-balance-factor must be a number of at least 1, not {factorText!r}"
        ) from None
    path = options["sticky-secret-file"]
    settings = ChooserSettings(
        hash=HashSettings(key=options["hash-key"], balanceFactor=factor),
        sticky=StickySettings(
            cookie=options["sticky-cookie"],
            secret=None if path is None else readSecret(path),
            fallback=options["sticky-fallback"],
        ),
    )
    checkSettings(settings)
    return settings


__all__ = ["readSecret", "settingsFromOptions"]
