"""
Choosing a backend for each request: the choosers and their registry
(L{choosers}), Maglev hashing (L{maglev}), signed affinity cookies
(L{sticky}) and the peak-EWMA latency estimate (L{ewma}).
"""
