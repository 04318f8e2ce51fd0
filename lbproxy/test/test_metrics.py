"""
Tests for L{lbproxy.metrics}: a scrape before and after known traffic
moves the counters by exactly that traffic; the output parses with
C{prometheus_client}'s own parser; workers' scrapes sum as documented.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.http.accesslog import AccessLog
from lbproxy.listen import parseListen
from lbproxy.metrics import combineExpositions
from lbproxy.metrics.collector import listenerLabel
from lbproxy.service import LoadBalancerConfig, LoadBalancerService
from lbproxy.test.fakes import get, reactor, startBackend
from lbproxy.upstream.health import HealthSettings

Gen = Generator[Any, Any, None]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: bytes | str) -> Samples:
    """
    Every sample of an exposition, by name and sorted labels.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class ScrapeTests(TestCase):
    """
    The metrics of a running load balancer, scraped around real requests.
    """

    @inlineCallbacks
    def test_countersMoveByTheTraffic(self) -> Gen:
        """
        Three requests through the proxy and one it refuses at the edge move
        the backend's request, response-class, byte and latency counters
        and the listener's rejection counter by exactly that much.
        """
        backend = yield startBackend(self, b"twelve bytes")
        service = LoadBalancerService(
            LoadBalancerConfig(
                backends=[backend.backend],
                listens=[parseListen("tcp:0:interface=127.0.0.1")],
                chooser=RoundRobinChooser(),
                accessLog=AccessLog(None, enabled=False),
                health=HealthSettings(interval=0),
            ),
            reactor,
            reactor,
        )
        service.startService()
        self.addCleanup(service.stopService)
        port = service.ports[0].getHost().port  # type: ignore[attr-defined]
        labels = (("backend", backend.backend.authority), ("pool", "default"))
        before = samples(service.renderMetrics())
        pool = HTTPConnectionPool(reactor, persistent=False)
        for _ in range(3):
            response, body = yield get(self, b"http://127.0.0.1:%d/" % (port,), pool=pool)
            self.assertEqual((response.code, body), (200, b"twelve bytes"))
        response, _ = yield get(
            self,
            b"http://127.0.0.1:%d/" % (port,),
            headers=Headers({b"Host": [b"not a host"]}),
            pool=pool,
        )
        self.assertEqual(response.code, 400)
        after = samples(service.renderMetrics())

        def moved(name: str, extra: tuple[tuple[str, str], ...] = ()) -> float:
            key = (name, tuple(sorted(labels + extra)))
            return after[key] - before.get(key, 0.0)

        self.assertEqual(moved("lbproxy_backend_requests_total"), 3)
        self.assertEqual(moved("lbproxy_backend_responses_total", (("class", "2xx"),)), 3)
        self.assertEqual(moved("lbproxy_backend_responses_total", (("class", "5xx"),)), 0)
        self.assertEqual(moved("lbproxy_backend_received_bytes_total"), 36)
        self.assertEqual(moved("lbproxy_backend_latency_seconds_count"), 3)
        self.assertEqual(moved("lbproxy_backend_latency_seconds_bucket", (("le", "+Inf"),)), 3)
        self.assertEqual(after[("lbproxy_backend_up", labels)], 1)
        self.assertEqual(after[("lbproxy_backend_in_flight", labels)], 0)
        listener = (("listener", "tcp:0:interface=127.0.0.1"),)
        rejected = after[("lbproxy_listener_rejections_total", (*listener, ("status", "400")))]
        self.assertEqual(rejected, 1)
        self.assertIn(("process_open_fds", ()), after)


class LabelTests(SynchronousTestCase):
    """
    Labels are bounded and short.
    """

    def test_listenerWithoutFiles(self) -> None:
        """
        A listener's label leaves out its key and certificate files.
        """
        self.assertEqual(
            listenerLabel("ssl:8443:privateKey=k.pem:certKey=c.pem:interface=::"),
            "ssl:8443:interface=::",
        )


class CombineTests(SynchronousTestCase):
    """
    L{combineExpositions}: one scrape for several workers.
    """

    def test_sums(self) -> None:
        """
        Counters, histograms and gauges such as in-flight add up; a backend
        is up only if every worker finds it so and ejected if any does;
        the start time is the earliest; the number of workers is given.
        """
        one = (
            "# TYPE lbproxy_backend_requests counter\n"
            'lbproxy_backend_requests_total{backend="b",pool="p"} 3\n'
            "# TYPE lbproxy_backend_in_flight gauge\n"
            'lbproxy_backend_in_flight{backend="b",pool="p"} 1\n'
            "# TYPE lbproxy_backend_up gauge\n"
            'lbproxy_backend_up{backend="b",pool="p"} 1\n'
            "# TYPE lbproxy_backend_ejected gauge\n"
            'lbproxy_backend_ejected{backend="b",pool="p"} 0\n'
            "# TYPE process_start_time_seconds gauge\n"
            "process_start_time_seconds 100\n"
        )
        two = one.replace("} 3", "} 4").replace(
            'in_flight{backend="b",pool="p"} 1', 'in_flight{backend="b",pool="p"} 2'
        )
        two = two.replace('up{backend="b",pool="p"} 1', 'up{backend="b",pool="p"} 0')
        two = two.replace('ejected{backend="b",pool="p"} 0', 'ejected{backend="b",pool="p"} 1')
        two = two.replace("process_start_time_seconds 100", "process_start_time_seconds 90")
        combined = samples(combineExpositions([one, two]))
        labels = (("backend", "b"), ("pool", "p"))
        self.assertEqual(combined[("lbproxy_backend_requests_total", labels)], 7)
        self.assertEqual(combined[("lbproxy_backend_in_flight", labels)], 3)
        self.assertEqual(combined[("lbproxy_backend_up", labels)], 0)
        self.assertEqual(combined[("lbproxy_backend_ejected", labels)], 1)
        self.assertEqual(combined[("process_start_time_seconds", ())], 90)
        self.assertEqual(combined[("lbproxy_workers_reporting", ())], 2)

    def test_unreadable(self) -> None:
        """
        An exposition that does not parse is an error, not a silent zero.
        """
        self.assertRaises(ValueError, combineExpositions, ["this is not { metrics"])
