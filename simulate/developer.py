"""One simulated developer writing one file through the editor, as a person would.

The file's text is what the developer means to write; its header is already there. They type the
rest line by line; at natural points (the start of a line's code, after `=`, `(`, `.` or `:`, and
a pause after the first letters of a longer name) they sometimes ask for a suggestion, and judge
it against what they were about to write:
    matches the intended text      accept it as is
    similar enough (tolerance)     accept, then edit the accepted text into what they meant
    its first words are right      accept it word by word as far as it is right (the editor's
                                   accept-next-word), then type the rest
    otherwise                      dismiss it and type what they meant
The real language server's tracker measures what happens afterwards (survival, rewrites).
An adversarial developer accepts everything at once and deletes it straight away; a quiet one
(accepts_all) takes everything after reading it and keeps it, then types what they meant after it.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from rapidfuzz.distance import Levenshtein

from simulate.editor import Document, Editor, Suggestion, word_steps
from simulate.profiles import Profile

TRIGGER_AFTER = "=(.:"
# A pause after typing this many characters of a name at least NAME_PAUSE_MIN_LENGTH long, the
# moment where editors most often offer the rest of an identifier.
NAME_PAUSE_AFTER = 2
NAME_PAUSE_MIN_LENGTH = 6
NAME = re.compile(rf"(?<!\w)[A-Za-z_]\w{{{NAME_PAUSE_MIN_LENGTH - 1},}}")
# No two requests closer than this many characters: nobody asks again right after a look.
MIN_REQUEST_GAP = 8
# Simulated seconds before an accepted suggestion is fixed, or an accepted one deleted.
FIX_DELAY_S = 2.0


@dataclass
class TypingStats:
    requests: int = 0
    shown: int = 0
    accepted: int = 0
    fixed: int = 0
    partial: int = 0
    dismissed: int = 0
    shown_ids: list[str] = field(default_factory=list)

    def add(self, other: TypingStats) -> None:
        self.requests += other.requests
        self.shown += other.shown
        self.accepted += other.accepted
        self.fixed += other.fixed
        self.partial += other.partial
        self.dismissed += other.dismissed
        self.shown_ids.extend(other.shown_ids)


def trigger_points(text: str, start: int = 0) -> list[int]:
    """Offsets from `start` where an editor would ask: the first code character of a line, the
    character after one of `=(.:` within a line, and a pause within a longer name."""
    points = []
    line_start = text.rfind("\n", 0, start) + 1
    name_pauses = {m.start() + NAME_PAUSE_AFTER for m in NAME.finditer(text, start)}
    for i in range(max(start, 1), len(text)):
        char = text[i]
        if char == "\n":
            line_start = i + 1
            continue
        after_trigger = text[i - 1] in TRIGGER_AFTER
        at_code_start = not char.isspace() and not text[line_start:i].strip()
        if after_trigger or at_code_start or i in name_pauses:
            points.append(i)
    return points


def intended_extent(suggestion: str, truth: str) -> tuple[int, float]:
    """How much of `truth` (the intended continuation) the suggestion stands for, and how similar
    they are: the length near the suggestion's own that matches it best."""
    lengths = range(max(1, len(suggestion) - 8), min(len(truth), len(suggestion) + 8) + 1)
    best = max(lengths, key=lambda m: Levenshtein.normalized_similarity(suggestion, truth[:m]), default=0)
    return best, Levenshtein.normalized_similarity(suggestion, truth[:best])


def right_words(suggestion: str, truth: str) -> int:
    """How many characters of the suggestion a person accepting word by word takes: whole
    accept-next-word steps, as long as they are what they meant to write."""
    length = 0
    for end in word_steps(suggestion):
        if not truth.startswith(suggestion[:end]):
            break
        length = end
    return length


def minimal_edit(old: str, new: str) -> tuple[int, int, str]:
    """(start, end, text): the one replacement within `old` that turns it into `new`, leaving the
    common prefix and suffix alone, as a person fixing a few characters would."""
    prefix = 0
    while prefix < min(len(old), len(new)) and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(old), len(new)) - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    return prefix, len(old) - suffix, new[prefix : len(new) - suffix]


class Developer:
    def __init__(self, editor: Editor, profile: Profile, time_scale: float) -> None:
        self.editor = editor
        self.profile = profile
        self.time_scale = time_scale

    async def sleep_simulated(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.time_scale)

    async def type_text(self, document: Document, text: str) -> None:
        """Type `text` at the end of the document, one didChange per line."""
        for piece in text.splitlines(keepends=True):
            self.editor.insert(document, len(document.text), piece)
            await self.sleep_simulated(len(piece) / self.profile.chars_per_s)

    async def write(
        self,
        uri: str,
        text: str,
        rng: random.Random,
        header: int = 0,
        pace: Callable[[], Awaitable[bool]] | None = None,
    ) -> TypingStats:
        """Write `text` into a document that opens with its first `header` characters, asking for
        suggestions on the way. `pace`, when given, is awaited before each request: False means
        this writer is done for the round, and the document is closed where it stands."""
        stats = TypingStats()
        document = self.editor.open(uri, text[:header])
        done, last_request = header, header - MIN_REQUEST_GAP
        try:
            for point in trigger_points(text, header):
                if stats.requests >= self.profile.max_requests_per_file:
                    break
                if point < done or point - last_request < MIN_REQUEST_GAP:
                    continue
                if rng.random() >= self.profile.request_rate:
                    continue
                await self.type_text(document, text[done:point])
                done = last_request = point
                if pace is not None and not await pace():
                    return stats
                stats.requests += 1
                # The end of the document: where `done` is, unless a kept suggestion went before it.
                offset = len(document.text)
                suggestion = await self.editor.suggest(document, offset)
                if suggestion is not None:
                    done += await self.judge(document, offset, suggestion, text[done:], stats)
            await self.type_text(document, text[done:])
        finally:
            self.editor.close(document)
        return stats

    async def judge(
        self, document: Document, offset: int, suggestion: Suggestion, truth: str, stats: TypingStats
    ) -> int:
        """Show, read and decide on a suggestion. Returns how many intended characters are now written."""
        stats.shown += 1
        stats.shown_ids.append(suggestion.completion_id)
        self.editor.shown(suggestion)
        await asyncio.sleep(self.profile.reading_time(suggestion.text))
        if self.profile.adversarial:
            await self.editor.accept(document, offset, suggestion)
            stats.accepted += 1
            await self.sleep_simulated(FIX_DELAY_S)
            self.editor.replace(document, offset, offset + len(suggestion.text), "")
            return 0
        if self.profile.accepts_all:
            # Kept as it came: what they meant is typed after it, so none of it is written yet.
            await self.editor.accept(document, offset, suggestion)
            stats.accepted += 1
            return 0
        if truth.startswith(suggestion.text):
            await self.editor.accept(document, offset, suggestion)
            stats.accepted += 1
            return len(suggestion.text)
        extent, similarity = intended_extent(suggestion.text, truth)
        if similarity >= self.profile.tolerance:
            await self.editor.accept(document, offset, suggestion)
            stats.fixed += 1
            await self.sleep_simulated(FIX_DELAY_S)
            start, end, replacement = minimal_edit(suggestion.text, truth[:extent])
            self.editor.replace(document, offset + start, offset + end, replacement)
            return extent
        right = right_words(suggestion.text, truth)
        if right >= self.profile.min_words_chars:
            self.editor.accept_words(document, offset, suggestion, right)
            stats.partial += 1
            return right
        self.editor.dismiss(suggestion)
        stats.dismissed += 1
        return 0
