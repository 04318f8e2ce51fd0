# -*- test-case-name: lbproxy.test.test_twistedwall -*-
"""
Every use of Twisted's private state, behind one wall (see each module's
docstring for the names it uses and the Twisted version they were checked
against). Nothing outside this package touches a private Twisted name.
"""
