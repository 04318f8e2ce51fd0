# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
Choosing a backend for each request. One module per policy, each with its
settings and their validation beside its C{choose()}: L{random} (random and
weighted random), L{roundrobin}, L{leastconn}, L{p2c}, L{peakewma} (the
chooser; the peak-EWMA latency estimate kept on each backend is L{ewma}),
L{hash} (with Maglev tables, L{maglev}) and L{sticky} (signed affinity
cookies). L{registry} maps C{--chooser} names (built-in, entry points,
dotted names) to them; L{weights} holds the weighted draws they share and
L{errors} the one error they raise.
"""
