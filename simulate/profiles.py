"""How a simulated developer behaves. Times come in two clocks on purpose:

- typing is in *simulated* seconds, divided by the run's time scale before sleeping, so a round
  of typing costs little wall time;
- reading a suggestion is in *real* seconds, because the backend and trainer judge visibility and
  reading speed on the wall clock (min_visible_ms, the inhuman-speed guard). An honest profile
  reads slower than those floors; the adversarial one accepts faster than a person can read.

The attackers (`flywheel simulate --attacker`) are one person each, at a set share of a training
round's requests: `adversarial` as above; `quiet`, who reads at an honest developer's speed and
accepts every suggestion and keeps it, so the speed and accept-then-delete guards pass it and only
the per-person share cap stands between it and an update; `many_ids`, a quiet one that sends a
fresh user id with every file over its one token, to be counted as many people.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Profile:
    name: str
    # Chance of asking for a suggestion at each natural trigger point (patience).
    request_rate: float
    # Accept-and-fix when the suggestion's similarity to the intended text reaches this; below it, dismiss.
    tolerance: float
    # Accept the right first words of a suggestion (word by word) when they come to this many
    # characters; fewer are quicker to type than to accept.
    min_words_chars: int
    # Typing speed in simulated characters per second.
    chars_per_s: float
    # Real seconds spent reading a suggestion before deciding: base + per character.
    read_s: float
    read_s_per_char: float
    # Accepts everything, then deletes it: a reward hacker the trainer's guards must catch.
    adversarial: bool = False
    # Accepts everything at reading speed and keeps it: poisoning that looks like a happy user.
    accepts_all: bool = False
    # Sends a fresh user id (the client's hint; the backend goes by the token) with every file.
    fresh_id_per_file: bool = False
    # At most this many requests per file, so a long file cannot dominate a round.
    max_requests_per_file: int = 40

    def reading_time(self, suggestion: str) -> float:
        return self.read_s + self.read_s_per_char * len(suggestion)

    @property
    def honest(self) -> bool:
        return not (self.adversarial or self.accepts_all or self.fresh_id_per_file)


# Slower than the guard's floor (150 ms + 5 ms per character) and above min_visible_ms (250 ms).
HONEST = Profile(
    "honest",
    request_rate=0.35,
    tolerance=0.6,
    min_words_chars=3,
    chars_per_s=6.0,
    read_s=0.3,
    read_s_per_char=0.008,
)
PICKY = Profile(
    "picky",
    request_rate=0.2,
    tolerance=0.85,
    min_words_chars=6,
    chars_per_s=8.0,
    read_s=0.4,
    read_s_per_char=0.01,
)
ADVERSARIAL = Profile(
    "adversarial",
    request_rate=0.5,
    tolerance=0.0,
    min_words_chars=0,
    chars_per_s=20.0,
    read_s=0.0,
    read_s_per_char=0.0,
    adversarial=True,
)

# Reads as an honest developer does (above the inhuman-speed floor), asks often, takes everything.
QUIET = Profile(
    "quiet",
    request_rate=0.5,
    tolerance=0.0,
    min_words_chars=0,
    chars_per_s=HONEST.chars_per_s,
    read_s=HONEST.read_s,
    read_s_per_char=HONEST.read_s_per_char,
    accepts_all=True,
)
MANY_IDS = replace(QUIET, name="many_ids", fresh_id_per_file=True)

HONEST_PROFILES = (HONEST, PICKY)
ATTACKERS = {profile.name: profile for profile in (QUIET, MANY_IDS, ADVERSARIAL)}


def assign_profiles(developers: int, adversarial_share: float) -> list[Profile]:
    """`developers` profiles, round(share × developers) of them adversarial but always at least one
    honest (the evaluation rounds need someone honest). Honest ones first, alternating kinds."""
    adversarial = min(max(round(adversarial_share * developers), 0), developers - 1)
    return honest_profiles(developers - adversarial) + [ADVERSARIAL] * adversarial


def honest_profiles(developers: int) -> list[Profile]:
    """`developers` honest profiles, alternating kinds (a run with an attacker person beside them)."""
    return [HONEST_PROFILES[i % len(HONEST_PROFILES)] for i in range(developers)]
