# -*- test-case-name: lbproxy.test.test_explain -*-
"""
Why a chooser picked the backend it picked: per-candidate figures for the
admin dashboard's sampled decisions (L{lbproxy.observe.decisions}).

A chooser may have an optional C{explain(backends, request, chosen)}
method (L{ExplainingChooser}) that says, right after a C{choose()} call
with the same arguments, what that call computed: peak-EWMA's costs and
the two it drew, p2c's two and their load, least-conn's load, hash's slot
and the Maglev table's owner of it, whether sticky's cookie named the
backend. Every built-in chooser has one. L{explainChoice} adds the figures
every candidate has whatever the chooser (in flight, latency estimate,
weights), and copes with choosers that have no C{explain} or whose
C{explain} fails. Nothing here runs unless a decision is sampled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

import attrs
from twisted.web.iweb import IRequest

from lbproxy.upstream.backends import Backend

Figure = float | int | str | bool | None
"""
One value a chooser explains a candidate with (JSON-ready).
"""

Figures = Mapping[str, Figure]
"""
A candidate's figures, by name (C{snake_case}, as the admin API shows
them).
"""


@attrs.frozen
class Explanation:
    """
    What a chooser says about one choice.

    @ivar reason: One line: why the chosen backend won.
    @ivar figures: One mapping per candidate, in the order the candidates
        were given: what the chooser computed for each (empty for a
        candidate it did not look at).
    """

    reason: str
    figures: Sequence[Figures]


class ExplainingChooser(Protocol):
    """
    A chooser that can say why it chose: the optional method next to
    C{IChooser.choose}.
    """

    def explain(
        self, backends: Sequence[Backend], request: IRequest, chosen: Backend | None
    ) -> Explanation:
        """
        Explain the C{choose(backends, request)} call that has just
        returned C{chosen}: called right after it, in the same reactor
        turn, with the same arguments, so it may read what that call left
        behind (the backends it drew, the slot it looked up). Never
        changes what later calls choose.
        """


class CandidateScore(NamedTuple):
    """
    One candidate of a decision, as it was when the choice was made
    (cheap to make: what needs formatting is formatted when read).

    @ivar backend: The candidate.
    @ivar chosen: Whether it was chosen.
    @ivar inFlight: Its requests in flight when the choice was made.
    @ivar ewma: Its peak-EWMA latency estimate in seconds, or L{None}
        before its first response.
    @ivar weight: Its configured weight.
    @ivar effectiveWeight: The weight choosers used (lower in slow start).
    @ivar figures: What the chooser computed for it (see L{Explanation}).
    """

    backend: Backend
    chosen: bool
    inFlight: int
    ewma: float | None
    weight: int
    effectiveWeight: float
    figures: Figures

    @property
    def address(self) -> str:
        """
        The candidate's C{host:port}.
        """
        return self.backend.authority

    @property
    def url(self) -> str:
        """
        The candidate's URL (what identifies it in the admin API).
        """
        return self.backend.url


def explainChoice(
    chooser: object,
    candidates: Sequence[Backend],
    chosen: Backend | None,
    request: IRequest,
) -> tuple[str, list[CandidateScore]]:
    """
    Why C{chooser} picked C{chosen} among C{candidates} for C{request}:
    the chooser's one-line reason and a L{CandidateScore} for every
    candidate, in order. Call it right after C{chooser.choose(candidates,
    request)} returned C{chosen}, before anything else runs.

    A chooser without an C{explain} method gets a reason saying so and
    the common figures only; one whose C{explain} raises (or answers with
    the wrong number of figures) gets the error as its reason: explaining
    never fails.
    """
    explain = getattr(chooser, "explain", None)
    name = type(chooser).__name__
    figures: Sequence[Figures] = ()
    if not candidates:
        reason = "no backend can take traffic"
    elif explain is None:
        reason = f"{name} does not explain its choices"
    else:
        try:
            explanation = explain(candidates, request, chosen)
            reason, figures = explanation.reason, explanation.figures
            if len(figures) != len(candidates):
                reason = f"{name}.explain gave {len(figures)} figures for {len(candidates)}"
                figures = ()
        except Exception as e:  # noqa: BLE001 - a third-party explain may raise anything
            reason = f"{name}.explain failed: {type(e).__name__}: {e}"
            figures = ()
    scores = [
        CandidateScore(
            backend,
            backend is chosen,
            backend.inFlight,
            backend.latencyEWMA.value,
            backend.weight,
            backend.effectiveWeight,
            figures[index] if figures else {},
        )
        for index, backend in enumerate(candidates)
    ]
    return reason, scores


def only(backends: Sequence[Backend]) -> Explanation | None:
    """
    The explanation of a choice among fewer than two backends (there was
    none to make), or L{None} when there were two or more.
    """
    if len(backends) > 1:
        return None
    return Explanation("the only backend that can take traffic", [{}] * len(backends))


__all__ = [
    "CandidateScore",
    "ExplainingChooser",
    "Explanation",
    "Figure",
    "Figures",
    "explainChoice",
    "only",
]
