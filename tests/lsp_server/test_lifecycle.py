"""Every row of a completion's lifecycle, as edit scripts → expected events, over the real tracker
and document mirror (LSP UTF-16 positions), with a hand-moved clock.

A script's steps: ("type", line, char, text) one keystroke per character; ("edit", (l, c), (l, c),
text) one content change; ("accept",), ("partial", utf16_units), ("reject",), ("show",) the three
signal kinds; ("request", line, char) a newer request in the same document; ("elsewhere",) a
request in another document; ("serve", id, line, char, text) a newer suggestion; ("wait", s);
("close",). Expected: the events in order as (kind, fields that must match).
"""

from __future__ import annotations

from typing import Any

import pytest

from core.wire import Event
from lsp_server.documents import Document
from lsp_server.tracker import Tracker

URI = "file:///w/a.py"
OTHER = "file:///w/b.py"
DELAYS = (10.0, 20.0)
WINDOW = 30.0


class Script:
    def __init__(self, text: str, infer_shown: bool = True, window: float = WINDOW) -> None:
        self.now = 100.0
        self.events: list[Event] = []
        self.docs = {URI: Document(text), OTHER: Document("")}
        self.tracker = Tracker(
            self.events.append,
            lambda uri: self.docs[uri].text if uri in self.docs else None,
            DELAYS,
            clock=lambda: self.now,
            wall_clock=lambda: 1_700_000_000.0 + self.now,
            rewrite_window_s=window,
            infer_shown=infer_shown,
        )

    def serve(self, cid: str, line: int, char: int, text: str) -> None:
        offset = self.docs[URI].offset_at(line, char, strict=True)
        assert offset is not None
        self.tracker.request(URI, offset)
        self.tracker.served(cid, URI, offset, text)
        self.cid = cid

    def run(self, step: tuple[Any, ...]) -> None:
        op, *args = step
        t, doc = self.tracker, self.docs[URI]
        if op == "type":
            line, char, text = args
            for c in text:
                t.edit(URI, doc.apply((line, char, line, char), c))
                char += 2 if ord(c) > 0xFFFF else 1
        elif op == "edit":
            (l1, c1), (l2, c2), text = args
            t.edit(URI, doc.apply((l1, c1, l2, c2), text))
        elif op == "accept":
            t.accept(self.cid)
        elif op == "partial":
            t.partially_accept(self.cid, args[0])
        elif op == "reject":
            t.reject(self.cid)
        elif op == "show":
            t.shown(self.cid)
        elif op == "request":
            t.request(URI, doc.offset_at(*args, strict=True) or 0)
        elif op == "elsewhere":
            t.request(OTHER, 0)
        elif op == "serve":
            self.serve(*args)
        elif op == "wait":
            self.now += args[0]
            t.poll()
        elif op == "close":
            t.closed(URI)
            del self.docs[URI]
        else:
            raise ValueError(op)


S = "bar(x)"  # the suggestion in most rows, served at the end of "y = foo."
START = ("y = foo.\nz = 1\n", 0, 8)

ROWS: list[tuple[str, dict[str, Any], list[tuple[Any, ...]], list[tuple[str, dict[str, Any]]]]] = [
    (
        "accept command, then the editor inserts it; survives untouched",
        {},
        [("wait", 0.5), ("accept",), ("edit", (0, 8), (0, 8), S), ("wait", 10), ("wait", 10)],
        [
            ("shown", {}),
            ("accepted", {"visible_ms": 500.0}),
            ("survival", {"delay_s": 10.0, "similarity": 1.0, "retained_chars": 6.0, "final": False}),
            ("survival", {"delay_s": 20.0, "text": S, "similarity": 1.0, "final": True}),
        ],
    ),
    (
        "inferred: typed along to the end",
        {},
        [("type", 0, 8, S), ("wait", 20)],
        [
            ("shown", {}),
            ("accepted", {"reason": "inferred"}),
            ("survival", {"delay_s": 10.0}),
            ("survival", {"similarity": 1.0, "final": True}),
        ],
    ),
    (
        "inferred: inserted whole by a client without the command, then edited inside",
        {},
        [("edit", (0, 8), (0, 8), S), ("edit", (0, 12), (0, 13), "yz"), ("wait", 20)],
        [
            ("shown", {}),
            ("accepted", {"reason": "inferred"}),
            ("survival", {"text": "bar(yz)"}),
            ("survival", {"text": "bar(yz)", "similarity": 0.7143, "retained_chars": 4.286, "final": True}),
        ],
    ),
    (
        "accepted, then deleted whole: nothing retained",
        {},
        [("accept",), ("edit", (0, 8), (0, 8), S), ("edit", (0, 0), (1, 0), "q\n"), ("wait", 20)],
        [
            ("shown", {}),
            ("accepted", {}),
            ("survival", {"similarity": 0.0}),
            ("survival", {"text": "", "similarity": 0.0, "retained_chars": 0.0, "final": True}),
        ],
    ),
    (
        "accepted, then the document closes before the first check",
        {},
        [("accept",), ("edit", (0, 8), (0, 8), S), ("wait", 3), ("close",)],
        [("shown", {}), ("accepted", {}), ("survival", {"delay_s": 3.0, "similarity": 1.0, "final": True})],
    ),
    (
        "partial acceptance by notification tracks the accepted prefix only",
        {},
        [("partial", 4), ("edit", (0, 8), (0, 8), "bar("), ("type", 0, 12, "zz"), ("wait", 20)],
        [
            ("shown", {}),
            ("partially_accepted", {"accepted_chars": 4}),
            ("survival", {"text": "bar("}),
            # Scored against the whole suggestion: 4 of 6 characters stand.
            ("survival", {"text": "bar(", "similarity": 0.6667, "retained_chars": 4.0, "final": True}),
        ],
    ),
    (
        "partial acceptance word by word, the editor inserting first",
        {},
        [
            ("edit", (0, 8), (0, 8), "bar"),
            ("partial", 3),
            ("edit", (0, 11), (0, 11), "(x"),
            ("partial", 5),
            ("wait", 20),
        ],
        [
            ("shown", {}),
            ("partially_accepted", {"accepted_chars": 3}),
            ("partially_accepted", {"accepted_chars": 5}),
            ("survival", {"text": "bar(x"}),
            ("survival", {"text": "bar(x", "similarity": 0.8333, "final": True}),
        ],
    ),
    (
        "partial acceptance, then the rest accepted by command",
        {},
        [("partial", 3), ("edit", (0, 8), (0, 8), "bar"), ("accept",), ("edit", (0, 11), (0, 11), "(x)")],
        [("shown", {}), ("partially_accepted", {"accepted_chars": 3}), ("accepted", {})],
    ),
    (
        "inferred partial acceptance: a word inserted in one piece, then typing diverges",
        {},
        [("edit", (0, 8), (0, 8), "bar"), ("type", 0, 11, "[0]"), ("wait", 20)],
        [
            ("shown", {}),
            ("partially_accepted", {"accepted_chars": 3, "reason": None}),
            ("survival", {"text": "bar"}),
            ("survival", {"text": "bar", "similarity": 0.5, "final": True}),
        ],
    ),
    (
        "rejected by notification; the rewrite is what was written at the spot",
        {},
        [("wait", 1), ("reject",), ("type", 0, 8, "baz(x)"), ("wait", 30)],
        [
            ("shown", {}),
            ("rejected", {"visible_ms": 1000.0, "final": False}),
            ("rewrite", {"text": "baz(x)", "similarity": 0.8333, "final": True}),
        ],
    ),
    (
        "ignored, typed over: the rewrite includes what was typed along",
        {},
        [("type", 0, 8, "ba"), ("type", 0, 10, "t"), ("type", 0, 11, "ch()"), ("wait", 30)],
        [
            ("shown", {}),
            ("ignored", {"reason": "typed_over", "final": False}),
            ("rewrite", {"text": "batch()", "final": True}),
        ],
    ),
    (
        "ignored, moved away: nothing written at the spot",
        {},
        [("type", 1, 5, "0"), ("wait", 30)],
        [
            ("shown", {}),
            ("ignored", {"reason": "moved_away", "final": False}),
            ("rewrite", {"text": "", "similarity": 0.0, "final": True}),
        ],
    ),
    (
        "ignored, superseded by a request elsewhere; the rewrite stops at the suggestion's line count",
        {},
        [("elsewhere",), ("edit", (0, 8), (0, 8), "bar(y)\nmore = 2"), ("wait", 30)],
        [
            ("shown", {}),
            ("ignored", {"reason": "superseded"}),
            ("rewrite", {"text": "bar(y)", "similarity": 0.8333, "final": True}),
        ],
    ),
    (
        "a request at the spot after typing along keeps it",
        {},
        [("type", 0, 8, "ba"), ("request", 0, 10), ("type", 0, 10, "r(x)")],
        [("shown", {}), ("accepted", {"reason": "inferred"})],
    ),
    (
        "a newer suggestion replaces it, and only the newer one can be accepted",
        {},
        [("type", 0, 8, "b"), ("serve", "c2", 0, 9, "ar(x)"), ("type", 0, 9, "ar(x)")],
        [
            ("shown", {"completion_id": "c1"}),
            ("ignored", {"completion_id": "c1", "reason": "superseded"}),
            ("shown", {"completion_id": "c2"}),
            ("accepted", {"completion_id": "c2"}),
        ],
    ),
    (
        "ignored by closing the document: no spot left to watch, so it is final",
        {},
        [("close",)],
        [("shown", {}), ("ignored", {"reason": "closed", "final": True})],
    ),
    (
        "the rewrite window cut short by closing the document",
        {},
        [("reject",), ("type", 0, 8, "qux"), ("close",)],
        [("shown", {}), ("rejected", {}), ("rewrite", {"text": "qux", "final": True})],
    ),
    (
        "no rewrite window configured: the ignore is final",
        {"window": 0.0},
        [("type", 0, 8, "q")],
        [("shown", {}), ("ignored", {"reason": "typed_over", "final": True})],
    ),
    (
        "a client that reports shown: visible time counts from its notification",
        {"infer_shown": False},
        [("wait", 0.2), ("show",), ("wait", 0.7), ("accept",)],
        [("shown", {}), ("accepted", {"visible_ms": 700.0})],
    ),
    (
        "a client that reports shown, never shown: visible 0, final, not trained on",
        {"infer_shown": False},
        [("elsewhere",), ("wait", 30)],
        [("ignored", {"reason": "superseded", "visible_ms": 0.0, "final": True})],
    ),
    (
        "a rejection after acceptance changes nothing",
        {},
        [("accept",), ("reject",)],
        [("shown", {}), ("accepted", {})],
    ),
]


@pytest.mark.parametrize(("options", "steps", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_lifecycle(
    options: dict[str, Any], steps: list[tuple[Any, ...]], expected: list[tuple[str, dict[str, Any]]]
) -> None:
    script = Script(START[0], **options)
    script.serve("c1", START[1], START[2], S)
    for step in steps:
        script.run(step)
    assert [e.kind for e in script.events] == [kind for kind, _ in expected]
    for event, (kind, fields) in zip(script.events, expected, strict=True):
        fields = {"completion_id": "c1", **fields}
        got = {k: getattr(event, k) for k in fields}
        assert got == pytest.approx(fields, abs=1e-3), kind
    # Exactly one final event per completion, and it is the last one.
    for cid in {e.completion_id for e in script.events}:
        own = [e for e in script.events if e.completion_id == cid]
        if any(e.final for e in own):
            assert [e.final for e in own] == [False] * (len(own) - 1) + [True]


def test_partial_acceptance_counts_utf16_units() -> None:
    script = Script("s = \n")
    script.serve("c1", 0, 4, "'😀é' + x")
    script.run(("partial", 2))  # the emoji's two units
    script.run(("partial", 1))  # less than already accepted: nothing new
    script.run(("partial", 3))  # splits nothing: the emoji and "'"... units 1 + 2
    assert [(e.kind, e.accepted_chars) for e in script.events] == [
        ("shown", None),
        ("partially_accepted", 1),
        ("partially_accepted", 3),
    ]
    s = script.tracker.get("c1")
    assert s is not None and s.acceptance is not None and s.acceptance.target == 2
