"""Unit tests for lbproxy, run with C{trial lbproxy}."""
