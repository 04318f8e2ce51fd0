"""
Tests for L{lbproxy.upstream.backends}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbproxy.upstream.backends import (
    DEFAULT_PORT,
    Backend,
    BackendPool,
    BackendSpecError,
    isIPLiteral,
    parseBackend,
    parseBackends,
    warnUnresolvable,
)

# (item, host, port) for every accepted spelling of one backend.
_ACCEPTED: list[tuple[str, str, int]] = [
    ("127.0.0.2", "127.0.0.2", 80),
    ("127.0.0.2:8080", "127.0.0.2", 8080),
    ("backend.example", "backend.example", 80),
    ("backend-1.example:81", "backend-1.example", 81),
    ("Backend_2.Example", "Backend_2.Example", 80),
    ("[::1]:8080", "::1", 8080),
    ("[::1]", "::1", 80),
    ("::1", "::1", 80),
    ("2001:db8::7", "2001:db8::7", 80),
    ("http://127.0.0.2:8080", "127.0.0.2", 8080),
    ("http://127.0.0.2:8080/", "127.0.0.2", 8080),
    ("http://127.0.0.2", "127.0.0.2", 80),
    ("HTTP://backend.example", "backend.example", 80),
    ("http://[::1]:81", "::1", 81),
    ("http://[::1]/", "::1", 80),
    ("  127.0.0.2:81  ", "127.0.0.2", 81),
    ("127.0.0.2:1", "127.0.0.2", 1),
    ("127.0.0.2:65535", "127.0.0.2", 65535),
    ("127.0.0.2:080", "127.0.0.2", 80),
]

# (item, a fragment of the reason) for every refused item.
_REFUSED: list[tuple[str, str]] = [
    # Ports.
    ("127.0.0.2:0", "port"),
    ("127.0.0.2:65536", "port"),
    ("127.0.0.2:99999999999", "port"),
    ("127.0.0.2:http", "port"),
    ("127.0.0.2:", "port"),
    ("127.0.0.2:-1", "port"),
    ("127.0.0.2: 80", "port"),
    ("[::1]:0", "port"),
    ("[::1]:", "port"),
    ("[::1]:x", "port"),
    ("http://127.0.0.2:0", "port"),
    # Schemes other than http and https.
    ("ftp://127.0.0.2", "http://"),
    # Paths, queries, fragments, userinfo.
    ("http://127.0.0.2/app", "path"),
    ("http://127.0.0.2:8080/app/", "path"),
    ("http://127.0.0.2?q", "path"),
    ("http://127.0.0.2#f", "path"),
    ("http://user@127.0.0.2", "path"),
    ("http://user:secret@127.0.0.2:8080", "path"),
    ("127.0.0.2/app", "host name"),
    ("127.0.0.2:8080/app", "port"),
    ("user@127.0.0.2", "host name"),
    # Hosts.
    ("http://", "host name"),
    ("http://:8080", "host name"),
    (":8080", "host name"),
    ("back end", "host name"),
    ("backend;rm", "host name"),
    ("bäckend.example", "host name"),
    ("[::1", "]"),
    ("[::1]8080", "unexpected"),
    ("[127.0.0.2]", "IPv6"),
    ("[backend]:80", "IPv6"),
    ("1:2:3", "IPv6"),
]


def assertOneLineError(
    case: SynchronousTestCase,
    exception: type[Exception],
    function: Callable[[str], object],
    value: str,
    *fragments: str,
) -> str:
    """
    C{function(value)} raises C{exception} with a one-line message that
    names C{value} (as its repr) and holds each of C{fragments}; return the
    message.
    """
    message = str(case.assertRaises(exception, function, value))
    case.assertEqual(len(message.splitlines()), 1, message)
    case.assertIn(repr(value), message)
    for fragment in fragments:
        case.assertIn(fragment, message)
    return message


class ParseBackendTests(SynchronousTestCase):
    """
    Tests for L{parseBackend}.
    """

    def assertSpecError(self, item: str, *fragments: str) -> str:
        """
        L{parseBackend} refuses C{item} with a one-line message naming it
        and holding each of C{fragments}; return the message.
        """
        return assertOneLineError(self, BackendSpecError, parseBackend, item, *fragments)

    def test_accepted(self) -> None:
        """
        Each accepted spelling gives an http backend on the host and port it
        names, port 80 when none is given, IPv6 hosts without brackets.
        """
        for item, host, port in _ACCEPTED:
            backend = parseBackend(item)
            self.assertEqual(
                (backend.scheme, backend.host, backend.port), ("http", host, port), item
            )

    def test_defaultPort(self) -> None:
        """
        The default port is 80.
        """
        self.assertEqual(DEFAULT_PORT, 80)

    def test_freshCounters(self) -> None:
        """
        A parsed backend has weight 1 and no requests counted.
        """
        backend = parseBackend("127.0.0.2")
        self.assertEqual(
            (backend.weight, backend.inFlight, backend.requests, backend.failures),
            (1, 0, 0, 0),
        )

    def test_refused(self) -> None:
        """
        Each refused item raises L{BackendSpecError} with a one-line
        message that names the item and says what is wrong with it.
        """
        for item, fragment in _REFUSED:
            self.assertSpecError(item, fragment)

    def test_empty(self) -> None:
        """
        An empty or blank item is refused as an empty backend.
        """
        for item in ["", "   "]:
            error = self.assertRaises(BackendSpecError, parseBackend, item)
            self.assertIn("empty backend", str(error))

    def test_nonASCIIDigitPorts(self) -> None:
        """
        A port spelled with digits other than ASCII ones is refused with a
        L{BackendSpecError} naming the item, like any other bad port.
        """
        for item in ["127.0.0.2:\u00b2", "127.0.0.2:\u0668\u0660"]:
            self.assertSpecError(item, "port")


class ParseBackendsTests(SynchronousTestCase):
    """
    Tests for L{parseBackends}.
    """

    def test_list(self) -> None:
        """
        A comma-separated list gives one backend per item, in order, with
        spaces around items ignored.
        """
        backends = parseBackends("127.0.0.2:8080, [::1]:8081 ,http://backend.example")
        self.assertEqual(
            [backend.authority for backend in backends],
            ["127.0.0.2:8080", "[::1]:8081", "backend.example:80"],
        )

    def test_single(self) -> None:
        """
        A list of one item gives one backend.
        """
        self.assertEqual([b.authority for b in parseBackends("127.0.0.2")], ["127.0.0.2:80"])

    def test_distinctObjects(self) -> None:
        """
        Each item gives its own L{Backend} with its own counters.
        """
        one, two = parseBackends("127.0.0.2,127.0.0.3")
        one.requestStarted()
        self.assertEqual((one.requests, two.requests), (1, 0))

    def test_emptyItems(self) -> None:
        """
        An empty list, or an empty item anywhere in it, is refused.
        """
        for text in ["", " ", ",", "a,,b", "a,", ",a", "a, ,b"]:
            error = self.assertRaises(BackendSpecError, parseBackends, text)
            self.assertIn("empty backend", str(error), text)

    def test_badItemNamed(self) -> None:
        """
        A bad item in a list is refused with a message naming that item.
        """
        error = self.assertRaises(BackendSpecError, parseBackends, "127.0.0.2,127.0.0.3:0")
        self.assertIn("'127.0.0.3:0'", str(error))

    def test_duplicates(self) -> None:
        """
        Two items for the same scheme, host and port are refused, however
        they are spelled; the message names the backend.
        """
        cases = [
            ("127.0.0.2,127.0.0.2", "127.0.0.2:80"),
            ("127.0.0.2,127.0.0.2:80", "127.0.0.2:80"),
            ("127.0.0.2:80,127.0.0.2", "127.0.0.2:80"),
            ("127.0.0.2,http://127.0.0.2", "127.0.0.2:80"),
            ("http://127.0.0.2:80/,127.0.0.2", "127.0.0.2:80"),
            ("127.0.0.3,127.0.0.2,127.0.0.2:80", "127.0.0.2:80"),
            ("backend.example,BACKEND.example:80", "backend.example:80"),
            ("[::1],::1", "[::1]:80"),
            ("[::1]:8080,[0:0::1]:8080", "[0:0::1]:8080"),
        ]
        for text, named in cases:
            message = str(self.assertRaises(BackendSpecError, parseBackends, text))
            self.assertIn("duplicate", message, text)
            self.assertIn(named.lower(), message.lower(), text)

    def test_sameHostOtherPort(self) -> None:
        """
        The same host on two ports is two backends.
        """
        self.assertEqual(len(parseBackends("127.0.0.2:80,127.0.0.2:81,[::1]:80,[::1]:81")), 4)

    def test_duplicateNamesItemAsWritten(self) -> None:
        """
        The message for a duplicate names the second item as it was
        written, so a person can find it in the list.
        """
        for text, item in [
            ("127.0.0.2,http://127.0.0.2", "http://127.0.0.2"),
            ("127.0.0.2,127.0.0.2:80", "127.0.0.2:80"),
        ]:
            error = self.assertRaises(BackendSpecError, parseBackends, text)
            self.assertIn(item, str(error))


class BackendTests(SynchronousTestCase):
    """
    Tests for L{Backend}.
    """

    def test_addresses(self) -> None:
        """
        C{authority}, C{url} and C{str} give host and port, with brackets
        around an IPv6 literal only.
        """
        cases = [
            (Backend("127.0.0.2"), "127.0.0.2:80"),
            (Backend("127.0.0.2", 8080), "127.0.0.2:8080"),
            (Backend("backend.example", 81), "backend.example:81"),
            (Backend("::1", 8080), "[::1]:8080"),
            (Backend("2001:db8::7"), "[2001:db8::7]:80"),
        ]
        for backend, authority in cases:
            self.assertEqual(
                (backend.authority, str(backend), backend.url),
                (authority, authority, "http://" + authority),
            )

    def test_identity(self) -> None:
        """
        Two backends for the same address are not equal: each has its own
        counters.
        """
        self.assertNotEqual(Backend("127.0.0.2"), Backend("127.0.0.2"))

    def test_counters(self) -> None:
        """
        C{requestStarted} counts a request in flight and in total;
        C{requestFinished} takes it out of flight, and counts a failure
        only when told it failed.
        """
        backend = Backend("127.0.0.2")
        backend.requestStarted()
        backend.requestStarted()
        backend.requestStarted()
        self.assertEqual((backend.inFlight, backend.requests, backend.failures), (3, 3, 0))
        backend.requestFinished()
        self.assertEqual((backend.inFlight, backend.requests, backend.failures), (2, 3, 0))
        backend.requestFinished(failed=True)
        self.assertEqual((backend.inFlight, backend.requests, backend.failures), (1, 3, 1))
        backend.requestFinished(failed=False)
        self.assertEqual((backend.inFlight, backend.requests, backend.failures), (0, 3, 1))

    def test_available(self) -> None:
        """
        A backend is available.
        """
        self.assertTrue(Backend("127.0.0.2").available)


class BackendPoolTests(SynchronousTestCase):
    """
    Tests for L{BackendPool}.
    """

    def test_availableInOrder(self) -> None:
        """
        C{available} lists the backends in configured order, as a new list
        each time.
        """
        backends = parseBackends("127.0.0.4,127.0.0.2,127.0.0.3")
        pool = BackendPool(backends)
        available = pool.available()
        self.assertEqual(available, backends)
        for got, configured in zip(available, backends, strict=True):
            self.assertIs(got, configured)
        available.pop()
        self.assertEqual(len(pool.available()), 3)

    def test_emptyPool(self) -> None:
        """
        An empty pool has nothing available.
        """
        self.assertEqual(BackendPool([]).available(), [])


class IsIPLiteralTests(SynchronousTestCase):
    """
    Tests for L{isIPLiteral}.
    """

    def test_cases(self) -> None:
        """
        IPv4 and IPv6 addresses are literals; names are not.
        """
        cases = [
            ("127.0.0.2", True),
            ("::1", True),
            ("2001:db8::7", True),
            ("localhost", False),
            ("backend.example", False),
            ("[::1]", False),
            ("", False),
        ]
        for host, expected in cases:
            self.assertEqual(isIPLiteral(host), expected, host)


class WeightTests(SynchronousTestCase):
    """
    Tests for the C{=WEIGHT} suffix of a C{--backends} item.
    """

    def test_table(self) -> None:
        """
        A whole number after C{=} is the backend's weight; without one the
        weight is 1.
        """
        cases = [
            ("10.0.0.1:80=3", ("10.0.0.1", 80, 3)),
            ("10.0.0.1=7", ("10.0.0.1", 80, 7)),
            ("[::1]:8080=2", ("::1", 8080, 2)),
            ("::1=5", ("::1", 80, 5)),
            ("http://h:81=4", ("h", 81, 4)),
            ("http://h:81/=4", ("h", 81, 4)),
            (" h = 1000 ", ("h", 80, 1000)),
            ("h", ("h", 80, 1)),
        ]
        for item, (host, port, weight) in cases:
            backend = parseBackend(item)
            self.assertEqual((backend.host, backend.port, backend.weight), (host, port, weight))

    def test_refused(self) -> None:
        """
        A weight that is not a whole number from 1 to 1000 is refused with a
        one-line message naming the item.
        """
        for item in ["h=0", "h=1001", "h=-1", "h=1.5", "h=", "h=x", "h=\N{FULLWIDTH DIGIT THREE}"]:
            assertOneLineError(self, BackendSpecError, parseBackend, item, "weight")

    def test_weightsInList(self) -> None:
        """
        Weights are read per item of a list, and the same address with two
        weights is still a duplicate.
        """
        backends = parseBackends("a=2,b,c:81=3")
        self.assertEqual([b.weight for b in backends], [2, 1, 3])
        message = str(self.assertRaises(BackendSpecError, parseBackends, "a=2,a=3"))
        self.assertIn("duplicate backend 'a=3'", message)


@implementer(IHostResolution)
class _Resolution:
    """
    A resolution in progress, for L{IResolutionReceiver.resolutionBegan}.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _Names:
    """
    A resolver that knows C{names}; it answers when told to (L{finish}).
    """

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.asked: list[tuple[IResolutionReceiver, str]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.asked.append((resolutionReceiver, hostName))
        return _Resolution(hostName)

    def finish(self) -> None:
        asked, self.asked = self.asked, []
        for receiver, name in asked:
            receiver.resolutionBegan(_Resolution(name))
            if name in self.names:
                receiver.addressResolved(IPv4Address("TCP", self.names[name], 80))
            receiver.resolutionComplete()


class WarnUnresolvableTests(SynchronousTestCase):
    """
    Tests for L{warnUnresolvable}.
    """

    def test_warnsAndGoesOn(self) -> None:
        """
        Each backend whose host name does not resolve gets one warning
        naming it, and is the result; backends given by address are not
        looked up; nothing fails.
        """
        events: list[dict[str, Any]] = []
        resolver = _Names({"app.internal": "10.0.0.5"})
        backends = parseBackends("app.internal:8080,gone.invalid,10.0.0.1,[::1]:81,https://nx.test")
        d = warnUnresolvable(backends, resolver, Logger(observer=cast(ILogObserver, events.append)))
        self.assertEqual(
            [name for _, name in resolver.asked], ["app.internal", "gone.invalid", "nx.test"]
        )
        self.assertNoResult(d)
        resolver.finish()
        self.assertEqual(self.successResultOf(d), [backends[1], backends[4]])
        warned = [(e["log_level"], e["backend"], e["host"]) for e in events if "backend" in e]
        self.assertEqual(
            warned,
            [
                (LogLevel.warn, "gone.invalid:80", "gone.invalid"),
                (LogLevel.warn, "nx.test:443", "nx.test"),
            ],
        )
        self.assertIn("gone.invalid", formatEvent(events[0]))

    def test_allAddresses(self) -> None:
        """
        With every backend given by address, nothing is looked up and
        nothing is logged.
        """
        events: list[dict[str, Any]] = []
        resolver = _Names({})
        d = warnUnresolvable(
            parseBackends("127.0.0.1:1,[::1]:2"),
            resolver,
            Logger(observer=cast(ILogObserver, events.append)),
        )
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual((resolver.asked, events), ([], []))
