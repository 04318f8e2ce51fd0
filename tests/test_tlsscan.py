"""
The TLS profile passes a real scanner: C{bench/tls_scan.py} runs sslyze
against C{twistd lbproxy}.  Skipped where sslyze is not installed (CI does
not install it; see the script for how to).
"""

from __future__ import annotations

import importlib.util
import os
import sys

from twisted.trial.unittest import TestCase

from tests.support import runProgram

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, "bench", "tls_scan.py")


def _findSSLyze() -> list[str] | None:
    """
    The sslyze command the scan script would use, or L{None}.
    """
    spec = importlib.util.spec_from_file_location("tls_scan", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found: list[str] | None = module.findSSLyze(None)
    return found


_SSLYZE = _findSSLyze()


class TLSScanTests(TestCase):
    """
    sslyze's verdict on lbproxy's TLS configuration.
    """

    if _SSLYZE is None:
        skip = "sslyze is not installed (put it on PATH or set SSLYZE)"

    async def scan(self, *args: str) -> str:
        """
        Run the scan script with C{args}; it must exit 0; return its output.
        """
        result = await runProgram([sys.executable, _SCRIPT, *args], _ROOT)
        self.assertEqual(result.code, 0, result.combined)
        return result.out

    async def test_intermediate(self) -> None:
        """
        By default lbproxy complies with Mozilla's "intermediate"
        configuration.
        """
        out = await self.scan()
        self.assertIn("verdict: compliant with Mozilla intermediate", out)

    async def test_modern(self) -> None:
        """
        With C{--tls-min 1.3} lbproxy complies with Mozilla's "modern"
        configuration.
        """
        out = await self.scan("--tls-min", "1.3")
        self.assertIn("verdict: compliant with Mozilla modern", out)
