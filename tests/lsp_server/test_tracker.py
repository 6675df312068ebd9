"""The outcome tracker: what becomes of a served suggestion, and how much of it survives.

Edits go through the real document mirror with LSP (UTF-16) positions, as the server feeds them.
"""

from __future__ import annotations

import pytest

from core.wire import Event
from lsp_server.documents import Document
from lsp_server.tracker import Tracker

URI = "file:///work/a.py"
OTHER = "file:///work/b.py"


class Editor:
    """One open document, the tracker, and a clock the test moves by hand."""

    def __init__(self, text: str, delays: tuple[float, ...] = (1.0, 2.0)) -> None:
        self.now = 1000.0
        self.events: list[Event] = []
        self.docs = {URI: Document(text), OTHER: Document("other\n")}
        self.tracker = Tracker(
            self.events.append,
            lambda uri: self.docs[uri].text if uri in self.docs else None,
            delays,
            rewrite_window_s=30.0,
            infer_shown=True,
            clock=lambda: self.now,
            wall_clock=lambda: 1_700_000_000.0 + self.now,
        )

    @property
    def doc(self) -> Document:
        return self.docs[URI]

    def serve(self, completion_id: str, line: int, character: int, text: str, uri: str = URI) -> int:
        offset = self.docs[uri].offset_at(line, character, strict=True)
        assert offset is not None
        self.tracker.request(uri, offset)
        self.tracker.served(completion_id, uri, offset, text)
        return offset

    def change(self, start: tuple[int, int], end: tuple[int, int], text: str, uri: str = URI) -> None:
        self.tracker.edit(uri, self.docs[uri].apply((*start, *end), text))

    def type(self, line: int, character: int, text: str) -> None:
        """One keystroke per character, as an editor sends them (UTF-16 columns)."""
        for char in text:
            self.change((line, character), (line, character), char)
            character += 2 if ord(char) > 0xFFFF else 1

    def wait(self, seconds: float) -> None:
        self.now += seconds
        self.tracker.poll()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def last(self, kind: str) -> Event:
        return [e for e in self.events if e.kind == kind][-1]


def test_typing_the_suggestion_along_is_an_inferred_acceptance() -> None:
    ed = Editor("x = foo.\n")
    ed.serve("c1", 0, 8, "bar()")
    ed.now += 0.8
    ed.type(0, 8, "bar()")
    assert ed.kinds() == ["shown", "accepted"]
    accepted = ed.last("accepted")
    assert accepted.reason == "inferred"
    assert accepted.visible_ms == pytest.approx(800.0)
    assert accepted.final is False


def test_pasting_it_whole_or_the_editor_inserting_it_is_an_acceptance() -> None:
    ed = Editor("x = foo.\n")
    ed.serve("c1", 0, 8, "bar()")
    ed.type(0, 8, "ba")
    # Some clients replace what was typed along with the whole suggestion.
    ed.change((0, 8), (0, 10), "bar()")
    assert ed.kinds() == ["shown", "accepted"]
    assert ed.doc.text == "x = foo.bar()\n"


def test_typing_something_else_at_the_spot_is_typed_over() -> None:
    ed = Editor("x = foo.\n")
    ed.serve("c1", 0, 8, "bar()")
    ed.type(0, 8, "baz")
    assert ed.kinds() == ["shown", "ignored"]
    ignored = ed.last("ignored")
    # Not the last event: the rewrite at its spot follows when the rewrite window closes.
    assert (ignored.reason, ignored.final) == ("typed_over", False)
    ed.type(0, 11, "()")
    ed.wait(30.0)
    assert ed.kinds() == ["shown", "ignored", "rewrite"]
    rewrite = ed.last("rewrite")
    assert (rewrite.text, rewrite.final) == ("baz()", True)
    assert rewrite.similarity == pytest.approx(0.8)


def test_typing_over_it_mid_line_collects_only_what_was_written_at_the_spot() -> None:
    ed = Editor("x = foo.rest\n")
    ed.serve("c1", 0, 8, "bar()")
    ed.type(0, 8, "baz")
    ed.wait(30.0)
    # The edit that ended it counts once: the rewrite stops before the text that was already there.
    assert ed.last("rewrite").text == "baz"


def test_deleting_before_the_spot_is_typed_over_and_editing_elsewhere_is_moving_away() -> None:
    ed = Editor("x = foo.\ny = 2\n")
    ed.serve("c1", 0, 8, "bar()")
    ed.change((0, 7), (0, 8), "")
    assert ed.last("ignored").reason == "typed_over"
    ed.serve("c2", 0, 7, "()")
    ed.type(1, 5, "0")
    assert ed.last("ignored").reason == "moved_away"
    assert ed.last("ignored").completion_id == "c2"


def test_a_newer_request_elsewhere_supersedes_but_one_at_the_spot_does_not() -> None:
    ed = Editor("x = foo.\n")
    ed.serve("c1", 0, 8, "bar()")
    ed.type(0, 8, "b")
    ed.tracker.request(URI, ed.doc.offset_at(0, 9) or 0)  # the editor asks again where typing goes on
    assert ed.kinds() == ["shown"]
    ed.tracker.request(OTHER, 0)
    assert ed.kinds() == ["shown", "ignored"]
    assert ed.last("ignored").reason == "superseded"


def test_closing_the_document_ends_a_waiting_suggestion() -> None:
    ed = Editor("x = foo.\n")
    ed.serve("c1", 0, 8, "bar()")
    ed.tracker.closed(URI)
    assert ed.last("ignored").reason == "closed"
    assert ed.tracker.get("c1") is None


def test_accept_command_after_the_editor_inserted_the_text_counts_once() -> None:
    ed = Editor("x = foo.\n")
    ed.serve("c1", 0, 8, "bar()")
    ed.change((0, 8), (0, 8), "bar()")
    assert ed.tracker.accept("c1") is True
    assert ed.kinds() == ["shown", "accepted"]


def test_accept_command_before_the_insertion_keeps_following_the_insertion() -> None:
    ed = Editor("x = foo.\n")
    ed.serve("c1", 0, 8, "bar()")
    ed.now += 0.5
    assert ed.tracker.accept("c1") is True
    accepted = ed.last("accepted")
    assert accepted.reason is None and accepted.visible_ms == pytest.approx(500.0)
    ed.change((0, 8), (0, 8), "bar()")
    s = ed.tracker.get("c1")
    assert s is not None and ed.doc.text[s.start : s.end] == "bar()"
    assert ed.kinds() == ["shown", "accepted"]
    assert ed.tracker.accept("nope") is False


def test_a_partly_accepted_suggestion_once_dismissed_is_never_offered_again() -> None:
    ed = Editor("x = foo.\n")
    offset = ed.serve("c1", 0, 8, "bar(baz)")
    ed.change((0, 8), (0, 8), "bar")  # the editor inserts the accepted word
    assert ed.tracker.partially_accept("c1", 3) is True
    s = ed.tracker.pending_at(URI, offset + 3)
    assert s is not None and s.completion_id == "c1"  # typing on into it keeps the rest
    assert ed.tracker.reject("c1") is True
    assert ed.tracker.pending_at(URI, offset + 3) is None
    # What was accepted is still followed and measured.
    ed.wait(2.5)
    assert ed.kinds() == ["shown", "partially_accepted", "survival", "survival"]
    assert ed.last("survival").retained_chars == 3


def test_survival_checks_measure_what_still_stands_at_each_delay() -> None:
    ed = Editor("x = foo.\n", delays=(1.0, 2.0))
    ed.serve("c1", 0, 8, "bar()")
    ed.change((0, 8), (0, 8), "bar()")
    ed.wait(1.0)
    first = ed.last("survival")
    assert (first.delay_s, first.text, first.final) == (1.0, "bar()", False)
    assert first.similarity == 1.0
    assert first.retained_chars == 5.0
    ed.change((0, 11), (0, 12), "x")  # "bar()" -> "barx)"
    ed.wait(1.0)
    second = ed.last("survival")
    assert (second.delay_s, second.text, second.final) == (2.0, "barx)", True)
    assert second.similarity == pytest.approx(0.8)
    assert second.retained_chars == pytest.approx(4.0)
    assert ed.tracker.get("c1") is None
    ed.wait(100.0)
    assert ed.kinds().count("survival") == 2


def test_closing_after_acceptance_makes_the_last_survival_check() -> None:
    ed = Editor("x = foo.\n", delays=(10.0,))
    ed.serve("c1", 0, 8, "bar()")
    ed.change((0, 8), (0, 8), "bar()")
    ed.now += 3.0
    ed.tracker.closed(URI)
    last = ed.last("survival")
    assert (last.delay_s, last.final, last.text) == (3.0, True, "bar()")
    assert ed.tracker.poll() is None


def _accepted(text: str, line: int, character: int, suggestion: str) -> Editor:
    ed = Editor(text, delays=(1.0,))
    ed.serve("c1", line, character, suggestion)
    ed.change((line, character), (line, character), suggestion)
    assert ed.kinds() == ["shown", "accepted"]
    return ed


def _tracked(ed: Editor) -> str:
    s = ed.tracker.get("c1")
    assert s is not None
    return "" if s.range.wiped else ed.doc.text[s.start : s.end]


def test_edits_before_the_range_shift_it() -> None:
    ed = _accepted("a = \nb = 1\n", 0, 4, "compute(b)")
    ed.change((0, 0), (0, 0), "# note\n")
    ed.change((1, 0), (1, 1), "alpha")
    assert ed.doc.text == "# note\nalpha = compute(b)\nb = 1\n"
    assert _tracked(ed) == "compute(b)"
    # Typing right after it or right before it leaves it alone.
    ed.change((1, 18), (1, 18), "  # ok")
    ed.change((1, 8), (1, 8), "1 + ")
    assert _tracked(ed) == "compute(b)"


def test_edits_inside_the_range_change_it() -> None:
    ed = _accepted("a = \n", 0, 4, "compute(b)")
    ed.change((0, 12), (0, 13), "c, d")  # b -> c, d
    assert _tracked(ed) == "compute(c, d)"
    ed.change((0, 4), (0, 11), "")  # delete "compute"
    assert _tracked(ed) == "(c, d)"


def test_edits_across_a_boundary_clip_it() -> None:
    ed = _accepted("a = \n", 0, 4, "compute(b)")
    ed.change((0, 2), (0, 7), "== ")  # "= com" replaced: overlaps the start
    assert ed.doc.text == "a == pute(b)\n"
    assert _tracked(ed) == "pute(b)"
    ed.change((0, 10), (1, 0), "]\n")  # "b)\n" overlaps the end
    assert ed.doc.text == "a == pute(]\n"
    assert _tracked(ed) == "pute("


def test_an_edit_over_the_whole_range_wipes_it_and_survival_scores_zero() -> None:
    ed = _accepted("a = \n", 0, 4, "compute(b)")
    ed.change((0, 0), (1, 0), "a = compute(b)  # retyped\n")
    ed.wait(1.0)
    last = ed.last("survival")
    assert (last.text, last.similarity, last.retained_chars, last.final) == ("", 0.0, 0.0, True)


def test_retyping_its_tail_counts_but_typing_after_it_does_not() -> None:
    ed = _accepted("a = \n", 0, 4, "compute(b)")
    ed.type(0, 14, "  # x")
    assert _tracked(ed) == "compute(b)"
    ed.change((0, 12), (0, 14), "")  # backspace over "b)"
    ed.type(0, 12, "c)")
    assert _tracked(ed) == "compute(c)"
    ed.change((0, 0), (0, 0), "# ")  # the user moves elsewhere: typing at the end is after it again
    ed.type(0, 16, "!")
    assert _tracked(ed) == "compute(c)"


def test_deleting_all_of_it_and_rewriting_measures_the_rewrite() -> None:
    ed = _accepted("a = \n", 0, 4, "compute(b)")
    ed.change((0, 4), (0, 14), "")
    assert _tracked(ed) == ""
    ed.type(0, 4, "compare(b)")
    assert _tracked(ed) == "compare(b)"
    ed.wait(1.0)
    assert ed.last("survival").similarity == pytest.approx(0.8)


def test_deleting_it_and_leaving_it_deleted_scores_zero() -> None:
    ed = _accepted("a = \nb\n", 0, 4, "compute(b)")
    ed.change((0, 4), (0, 14), "")
    ed.type(1, 1, "c")
    ed.change((0, 4), (0, 4), "0")  # typed at the old spot after working elsewhere
    assert _tracked(ed) == ""
    ed.wait(1.0)
    assert (ed.last("survival").similarity, ed.last("survival").retained_chars) == (0.0, 0.0)


def test_ranges_follow_in_utf16_with_emoji_accents_and_crlf() -> None:
    text = "# café 😀\r\nname = \r\nend\r\n"
    ed = _accepted(text, 1, 7, "'Zoë 🎉'")
    assert _tracked(ed) == "'Zoë 🎉'"
    # An emoji typed before the range on the same line: two UTF-16 units, one character.
    ed.change((1, 0), (1, 0), "😀")
    assert _tracked(ed) == "'Zoë 🎉'"
    # Inside the range, after its own emoji: "'Zoë 🎉" is 7 UTF-16 units, +9 for the emoji and "😀name = ".
    ed.change((1, 16), (1, 16), "!")
    assert _tracked(ed) == "'Zoë 🎉!'"
    # A line inserted above with CRLF shifts it by whole lines.
    ed.change((0, 10), (0, 10), "\r\nimport os")
    assert ed.doc.text.splitlines()[2] == "😀name = 'Zoë 🎉!'"
    assert _tracked(ed) == "'Zoë 🎉!'"
    ed.wait(1.0)
    assert ed.last("survival").similarity == pytest.approx(1 - 1 / 8)


def test_every_event_is_a_wire_event_from_where_it_is_made_with_a_unique_id() -> None:
    ed = Editor("x = foo.\n", delays=(1.0,))
    ed.serve("c1", 0, 8, "bar()")
    ed.type(0, 8, "bar()")
    ed.serve("c2", 0, 13, "  # done", uri=URI)
    ed.tracker.request(OTHER, 0)
    ed.wait(30.0)
    assert ed.kinds() == ["shown", "accepted", "shown", "ignored", "survival", "rewrite"]
    for event in ed.events:
        assert isinstance(event, Event)
        assert Event.model_validate_json(event.model_dump_json(exclude_none=True)) == event
    assert len({e.event_id for e in ed.events}) == len(ed.events)
    finals = [e.kind for e in ed.events if e.final]
    assert finals == ["survival", "rewrite"]
