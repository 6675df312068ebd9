"""The trainer SIGKILLed at points spread over one cycle, then `flywheel trainer --once` again.

A first cycle runs uninterrupted and its timeline is taken from outside: the process start, the
trainer's requests as the relay between it and the backend sees them (bench/faults/tap.py), and
its directory as a watcher polling every millisecond sees it (a candidate's temp directory, the
candidate whole, the state file naming it pending, the cursor moved). The kill points are:

- times spread evenly over that cycle from its start to the announced upload, each a share of the
  phase it falls in (start-up, pulling episodes, the update, the gate), counted from the phase's
  start in the run being killed: these phases last seconds, and a kill from a timer lands in them.
  The phases' lengths are those of the last cycle that ran through them (the first, then each
  restarted trainer's), since a shared machine's load makes them vary by a factor of two; a run
  that ends before its timer fires is tried again (on a new round of episodes);
- the moments themselves for the windows that last milliseconds (saving, the pending mark, the
  upload, the cursor): the save's and the cursor's from the watcher, the upload's from the relay,
  which holds the trainer at an exact point of the exchange while it is killed. A timer would land
  in a 20 ms window once in a hundred tries; no hook inside the trainer is needed.

Each kill is a SIGKILL from this process. Before each point a round of episodes is made (real
completions from the backend, final events from eight people); after the kill and again after the
restarted trainer has finished, the checks of bench/faults/checks.py run, and the restarted
trainer must have trained past the round's episodes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.faults import checks
from bench.faults.tap import UPLOAD_POINTS, Tap
from bench.tokens import NO_CONFIGURED_TOKEN, local_headers, people
from core.local_tokens import ADMIN
from core.processes import start_backend, stop_process
from trainer.state import load_state

# Moments the watcher sees in the trainer's directory.
WATCHED_POINTS = ("save:temp", "save:whole", "pending", "cursor")
# The moment-points, in the order a cycle reaches them.
MOMENT_POINTS = (
    "status:uploading",
    "save:temp",
    "save:whole",
    "pending",
    *UPLOAD_POINTS,
    "cursor",
    "status:idle",
)
# Which of them to keep when fewer points than moments are asked for, most telling first.
MOMENT_PRIORITY = (
    "upload:answer",
    "save:temp",
    "cursor",
    "upload:partial",
    "pending",
    "upload:sent",
    "save:whole",
    "upload:delivered",
    "status:uploading",
    "upload:received",
    "status:idle",
)
# The timeline's moments a time point is measured from, and the phase each one starts; each phase
# ends where the next begins, the last at the announced upload.
ANCHORS = {
    "spawn": "start-up",
    "GET /v1/model": "pulling episodes",
    "status:training": "update",
    "status:gating": "gate",
}
PHASE_END = dict(zip(ANCHORS, [*list(ANCHORS)[1:], "status:uploading"], strict=True))
# Tries of a time point whose run ended before its timer fired.
TIME_POINT_TRIES = 3
PEOPLE = 8
TRAINER_TIMEOUT_S = 900


@dataclass(frozen=True)
class KillPoint:
    name: str
    phase: str
    # A time point: this share of the phase that starts at `anchor`; a moment point: anchor is None.
    anchor: str | None = None
    share: float = 0.0

    def offset_s(self, timeline: dict[str, float]) -> float:
        """Seconds after the anchor, by the phase's length in `timeline`."""
        anchor = str(self.anchor)
        return self.share * (timeline[PHASE_END[anchor]] - timeline[anchor])


def moment_phase(point: str) -> str:
    if point.startswith("upload:") and point != "upload:delivered":
        return "upload"
    if point in ("upload:delivered", "cursor", "status:idle"):
        return "cursor"
    return "save"


def plan(timeline: dict[str, float], count: int) -> list[KillPoint]:
    """`count` kill points over a cycle whose moments happened at `timeline` (seconds after start):
    the moment points, and time points filling the rest evenly up to the announced upload."""
    if count <= len(MOMENT_POINTS):
        moments, timed = set(MOMENT_PRIORITY[: max(count - 1, 0)]), min(count, 1)
    else:
        moments, timed = set(MOMENT_POINTS), count - len(MOMENT_POINTS)
    end = timeline["status:uploading"]
    anchors = sorted((timeline[name], name) for name in ANCHORS)
    points = []
    for k in range(timed):
        # One time point alone goes to the middle of the update, the longest phase.
        at = (
            (timeline["status:training"] + timeline["status:gating"]) / 2
            if timed == 1
            else end * (k + 0.5) / timed
        )
        anchor_at, anchor = max((a for a in anchors if a[0] <= at), default=(0.0, "spawn"))
        share = (at - anchor_at) / max(timeline[PHASE_END[anchor]] - anchor_at, 1e-9)
        points.append(KillPoint(f"{ANCHORS[anchor]} {share:.0%}", ANCHORS[anchor], anchor, share))
    points += [KillPoint(m, moment_phase(m)) for m in MOMENT_POINTS if m in moments]
    return points


class Watcher:
    """Polls the trainer's directory every millisecond for the moments of a save and of the cursor;
    kills the trainer at the armed one."""

    def __init__(self, trainer_dir: Path) -> None:
        self.trainer_dir = trainer_dir
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, armed: str | None, kill: Callable[[], None]) -> None:
        candidates = self.trainer_dir / "candidates"
        before = set(os.listdir(candidates)) if candidates.is_dir() else set()
        cursor = load_state(self.trainer_dir).cursor
        self.seen = {}
        self._stop.clear()

        def poll() -> None:
            while not self._stop.is_set():
                now = self._moments(candidates, before, cursor)
                for point in now:
                    if point not in self.seen:
                        self.seen[point] = time.monotonic()
                        if point == armed:
                            kill()
                            return
                time.sleep(0.001)

        self._thread = threading.Thread(target=poll, name="fault-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _moments(self, candidates: Path, before: set[str], cursor: int) -> list[str]:
        found = []
        names = set(os.listdir(candidates)) - before if candidates.is_dir() else set()
        if any(n.startswith(".") for n in names):
            found.append("save:temp")
        if any(not n.startswith(".") for n in names):
            found.append("save:whole")
        try:
            state = load_state(self.trainer_dir)
        except ValueError:  # never seen: the file is replaced whole
            return found
        if state.pending_candidate is not None:
            found.append("pending")
        if state.cursor > cursor:
            found.append("cursor")
        return found


@dataclass
class Rig:
    """A backend, the relay the trainer reaches it through, and people to make episodes."""

    url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    tap: Tap
    admin: dict[str, str]
    users: list[dict[str, str]] = field(default_factory=list)
    runs: int = 0
    # The last cycle that ran through every phase: when its moments happened, seconds after start.
    timeline: dict[str, float] = field(default_factory=dict)

    @property
    def trainer_dir(self) -> Path:
        return self.data_dir / "trainer"

    def close(self) -> None:
        self.tap.stop()
        stop_process(self.process)


def start_rig(model: str, data_dir: Path, **extra: str) -> Rig:
    settings = dict(
        FLYWHEEL_EPISODES__WINDOW_S="1",
        FLYWHEEL_BACKEND__FINALIZE_INTERVAL_S="0.2",
        # Promoted on upload: the trainer would wait for a canary's verdict before its next cycle.
        FLYWHEEL_CANARY__SHARE="0",
        **NO_CONFIGURED_TOKEN,
    )
    process, url, env = start_backend(model, data_dir, **{**settings, **extra})
    port = int(url.rsplit(":", 1)[1])
    tap = Tap(("127.0.0.1", port)).start()
    admin = local_headers(data_dir, ADMIN)
    rig = Rig(url, data_dir, env, process, tap, admin)
    rig.users = people(url, admin, PEOPLE, "faults")
    return rig


def make_episodes(rig: Rig, n: int) -> int:
    """n completions from the people in turn, each shown one accepted or rejected at a human pace;
    returns the highest episode seq once every one of them is finalized."""
    completion_ids = []
    with httpx.Client(base_url=rig.url, timeout=60) as http:
        for i in range(n):
            user = rig.users[i % len(rig.users)]
            context = {"prefix": f"def handler_{i}(request):\n    value = ", "suffix": "\n", "path": "app.py"}
            body = (
                http.post("/v1/complete", json={"context": context}, headers=user).raise_for_status().json()
            )
            completion_ids.append(body["completion_id"])
            if not body["text"]:
                continue  # an abstention: its episode finalizes when its window closes
            event = {
                "event_id": uuid.uuid4().hex,
                "completion_id": body["completion_id"],
                "kind": "accepted" if i % 2 else "rejected",
                "client_ts": time.time(),
                "visible_ms": 1500.0,
                "final": True,
            }
            http.post("/v1/events", json={"events": [event]}, headers=user).raise_for_status()
        wanted, deadline, last = set(completion_ids), time.monotonic() + 120, 0
        cursor = 0
        while wanted and time.monotonic() < deadline:
            page = (
                http.get("/v1/episodes", params={"cursor": cursor, "limit": 1000}, headers=rig.admin)
                .raise_for_status()
                .json()
            )
            for episode in page["episodes"]:
                wanted.discard(episode["completion_id"])
                last = max(last, episode["seq"])
            cursor = max(cursor, page["next_cursor"])
            if wanted:
                time.sleep(0.2)
    if wanted:
        raise RuntimeError(f"{len(wanted)} episodes not finalized within 120 s")
    return last


@dataclass
class Run:
    returncode: int
    spawned: float
    # Seconds after the start: the relay's and the watcher's moments, the kill.
    timeline: dict[str, float]
    killed_at: float | None
    wall_s: float
    log: Path


def run_trainer(rig: Rig, point: KillPoint | None, log_dir: Path) -> Run:
    """One `flywheel trainer --once` through the relay, SIGKILLed at `point` (None: left to finish)."""
    rig.runs += 1
    log_path = log_dir / f"trainer-{rig.runs:02d}.log"
    env = dict(rig.env, FLYWHEEL_BACKEND__URL=rig.tap.url)
    process: subprocess.Popen[bytes] | None = None
    killed: list[float] = []
    lock = threading.Lock()

    def kill() -> None:
        with lock:
            if process is not None and process.poll() is None and not killed:
                os.kill(process.pid, signal.SIGKILL)
                killed.append(time.monotonic())
                process.wait()

    watcher = Watcher(rig.trainer_dir)
    rig.tap.arm(
        point.name if point and point.name not in WATCHED_POINTS and point.anchor is None else None, kill
    )
    watcher.start(point.name if point and point.name in WATCHED_POINTS else None, kill)
    with open(log_path, "wb") as log:
        spawned = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "trainer", "--once"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    timer = None
    if point is not None and point.anchor is not None:
        offset_s = point.offset_s(rig.timeline)
        timer = threading.Thread(
            target=_timed_kill,
            args=(rig.tap, str(point.anchor), offset_s, spawned, process, kill),
            daemon=True,
        )
        timer.start()
    try:
        returncode = process.wait(timeout=TRAINER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill()
        raise RuntimeError(f"the trainer ran past {TRAINER_TIMEOUT_S} s; see {log_path}") from None
    finally:
        watcher.stop()
        if timer is not None:
            timer.join(5)
    timeline = {"spawn": 0.0}
    for at, name in rig.tap.seen:
        timeline.setdefault(name, at - spawned)
    for name, at in watcher.seen.items():
        timeline.setdefault(name, at - spawned)
    wall_s = time.monotonic() - spawned
    if "status:uploading" in timeline and (not killed or killed[0] - spawned > timeline["status:uploading"]):
        rig.timeline = timeline
    return Run(returncode, spawned, timeline, killed[0] - spawned if killed else None, wall_s, log_path)


def _timed_kill(
    tap: Tap,
    anchor: str,
    offset_s: float,
    spawned: float,
    process: subprocess.Popen[bytes],
    kill: Callable[[], None],
) -> None:
    while process.poll() is None:
        anchor_at = spawned if anchor == "spawn" else tap.first(anchor)
        if anchor_at is not None:
            delay = anchor_at + offset_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            kill()
            return
        time.sleep(0.001)


@dataclass
class Snapshot:
    versions: set[str]
    cursor: int
    candidates: set[str]
    temp_dirs: set[str]


def snapshot(rig: Rig) -> Snapshot:
    listed = httpx.get(f"{rig.url}/v1/checkpoints", headers=rig.admin, timeout=30).raise_for_status().json()
    candidates = rig.trainer_dir / "candidates"
    names = set(os.listdir(candidates)) if candidates.is_dir() else set()
    return Snapshot(
        {c["version"] for c in listed},
        load_state(rig.trainer_dir).cursor,
        {n for n in names if not n.startswith(".")},
        {n for n in names if n.startswith(".")},
    )


def inspect(rig: Rig) -> tuple[list[Any], checks.TrainerDir, list[str]]:
    """Every check on the backend's checkpoints and the trainer's directory: the checkpoints,
    the directory's verdict and all problems found."""
    listed, problems = checks.backend_checkpoints(rig.url, rig.admin)
    arrived = {str(c.metrics.get("candidate")) for c in listed}
    local = checks.trainer_dir_problems(rig.trainer_dir, arrived)
    problems += local.problems + checks.episodes_twice(listed)
    problems += checks.served_equals_saved(rig.url, rig.admin, rig.trainer_dir, [c.version for c in listed])
    return listed, local, problems


def landed_in(before: Snapshot, after: Snapshot, state_pending: str | None) -> str:
    """Where the kill left the cycle, read from what it left behind."""
    if after.cursor > before.cursor:
        return "after the cursor moved"
    if after.versions - before.versions:
        return "upload taken by the backend, cursor not moved"
    if state_pending is not None:
        return "candidate saved and marked pending, not at the backend"
    if after.candidates - before.candidates:
        return "candidate saved whole, not yet marked pending"
    if after.temp_dirs - before.temp_dirs:
        return "mid-save: a temp dir left"
    return "before the save: nothing on disk"


def kill_and_resume(rig: Rig, point: KillPoint, episodes: int, log_dir: Path) -> dict[str, Any]:
    """One kill point: a round of episodes, a trainer killed at `point`, the checks, a trainer
    restarted to the end, the checks again. Its record for the report."""
    tries = 0
    while True:
        tries += 1
        last_seq = make_episodes(rig, episodes)
        before = snapshot(rig)
        killed = run_trainer(rig, point, log_dir)
        # A timer that had not fired when the run ended: that run was a whole cycle, and the
        # phases are now measured on it.
        if killed.killed_at is not None or point.anchor is None or tries == TIME_POINT_TRIES:
            break
    after = snapshot(rig)
    listed, local, problems_after_kill = inspect(rig)
    state = local.state
    landed = landed_in(before, after, state.pending_candidate if state else None)
    if killed.killed_at is None:
        landed = f"not killed: the trainer ended first (exit {killed.returncode})"
    resumed = run_trainer(rig, None, log_dir)
    final = snapshot(rig)
    listed, local, problems_after_resume = inspect(rig)
    if resumed.returncode != 0:
        problems_after_resume.append(f"the restarted trainer exited {resumed.returncode}; see {resumed.log}")
    if final.cursor < last_seq:
        problems_after_resume.append(
            f"the restarted trainer left episodes {final.cursor + 1}..{last_seq} untrained"
        )
    if local.state is not None and local.state.pending_candidate is not None:
        problems_after_resume.append(f"candidate {local.state.pending_candidate} still pending")
    new = sorted(final.versions - before.versions, key=lambda v: int(v.lstrip("v")))
    return {
        "point": point.name,
        "phase": point.phase,
        "killed": killed.killed_at is not None,
        "killed_at_s": round(killed.killed_at, 3) if killed.killed_at is not None else None,
        "tries": tries,
        "landed": landed,
        "temp_dirs_left": sorted(after.temp_dirs - before.temp_dirs),
        "problems_after_kill": problems_after_kill,
        "resume_exit": resumed.returncode,
        "resume_s": round(resumed.wall_s, 1),
        "new_versions": new,
        "problems_after_resume": problems_after_resume,
        "survived": killed.killed_at is not None and not problems_after_kill and not problems_after_resume,
        "checkpoints": checks.summary_of(listed),
    }


def baseline(rig: Rig, episodes: int, log_dir: Path) -> dict[str, Any]:
    """The first cycle, uninterrupted: its timeline (seconds after start) and its checks."""
    last_seq = make_episodes(rig, episodes)
    run = run_trainer(rig, None, log_dir)
    listed, _, problems = inspect(rig)
    if run.returncode != 0:
        problems.append(f"the trainer exited {run.returncode}; see {run.log}")
    missing = [p for p in (*ANCHORS, "status:uploading") if p not in run.timeline]
    if missing:
        raise RuntimeError(f"the first cycle never reached {missing}; see {run.log}")
    return {
        "timeline": {k: round(v, 4) for k, v in sorted(run.timeline.items(), key=lambda kv: kv[1])},
        "wall_s": round(run.wall_s, 1),
        "cursor": load_state(rig.trainer_dir).cursor,
        "last_seq": last_seq,
        "problems": problems,
        "checkpoints": checks.summary_of(listed),
    }
