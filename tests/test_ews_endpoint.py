"""protocol.is_ews_endpoint keeps its answer per short path: the same answers, bounded memory."""

from __future__ import annotations

from ucsproxy import protocol


def _formula(path: str) -> bool:
    return path.split("?", 1)[0].lower().rstrip("/") == "/ews/exchange.asmx"


def test_the_kept_answers_are_the_formula_s_and_stay_bounded():
    paths = ["/EWS/Exchange.asmx", "/ews/exchange.ASMX/", "/EWS/Exchange.asmx?x=1", "/EWS/Exchange.asmx//",
             "/EWS/Exchange.asmxx", "/EWS/", "/", "", "/ews/exchange.asmx?" + "q" * 300, "/x" + "y" * 70_000]
    for _ in range(2):  # first worked out, then kept
        for path in paths:
            assert protocol.is_ews_endpoint(path) is _formula(path), path
    assert not [p for p in protocol._EWS_ENDPOINTS if len(p) > 256]
    for n in range(3000):
        path = f"/EWS/Exchange.asmx?{n}" if n % 2 else f"/other/{n}"
        assert protocol.is_ews_endpoint(path) is _formula(path)
    assert len(protocol._EWS_ENDPOINTS) <= 1024
