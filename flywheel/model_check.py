"""Whether `flywheel up` can serve the configured model, and why not: one line a person can act on.

A model that cannot be had stops `flywheel up` (flywheel/up.py) rather than being replaced by the
bootstrapped one: a team would be served junk and the trainer would learn from it. Two checks:
before anything starts (the directory or the Hub id, the vLLM environment), and while the backend
loads it (the exception it exits with, or the root cause in the log of the vLLM server it started).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from core.config import ServingConfig

# The weights a model directory holds, in any of the layouts transformers and vLLM load.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
# The last line of a Python traceback: `SomeError: what happened`.
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit)\b:?\s*(.*)$")


def model_unavailable_reason(name: str) -> str | None:
    """None when `name` (a local directory or a Hub id) can be loaded here, else why not."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return "no config.json in that directory"
        if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
            return "no weights (*.safetensors or pytorch_model*.bin) in that directory"
        return None
    if name.startswith(("/", "./", "../", "~")):
        return "no such directory"
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(name)
    except Exception as error:  # offline, unknown id, gated repo: all mean "not here"
        return str(error).splitlines()[0][:200]
    return None


def engine_unavailable_reason(serving: ServingConfig) -> str | None:
    """None when the configured engine can start here, else why not: a vLLM server the backend
    would start needs the vLLM environment (servers at `serving.vllm_urls` are asked when the
    backend starts)."""
    if serving.engine != "vllm" or serving.vllm_urls:
        return None
    from backend.vllm_server import vllm_python

    python = vllm_python(serving)
    if not python.exists():
        return f"no vLLM environment at {python} (make vllm-env, or set serving.vllm_python)"
    return None


# A vLLM log line's prefix: `(VllmWorker-0 pid=19027) ERROR 12-04 18:50:52 [file.py:953] `.
_VLLM_PREFIX = re.compile(r"^(?:\([\w-]+ pid=\d+\) )?(?:[A-Z]+ \d\d-\d\d [\d:.]+ \[[^\]]*\] )?")
# Where a server's run starts in a log that several runs appended to.
_VLLM_RUN_START = "non-default args:"


def vllm_root_cause(log_path: Path) -> str | None:
    """The first exception a vLLM server's last run wrote (the root cause: the lines after it, such
    as "Engine core initialization failed. See root cause above", only report it), or None."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    starts = [n for n, line in enumerate(lines) if _VLLM_RUN_START in line]
    run = [_VLLM_PREFIX.sub("", line).strip() for line in lines[starts[-1] if starts else 0 :]]
    for n, text in enumerate(run):
        if _ERROR_LINE.match(text):
            # pydantic's "1 validation error for X" says what only on the next line.
            detail = f" {run[n + 1]}" if "validation error" in text and n + 1 < len(run) else ""
            return f"{text}{detail}"[:400]
    return None


class StderrTail:
    """Relays a child's stderr to ours line by line and keeps its last lines, so that a child
    that dies while starting can be explained in one line."""

    def __init__(self, process: subprocess.Popen[bytes], keep: int = 200) -> None:
        assert process.stderr is not None
        self.lines: deque[str] = deque(maxlen=keep)
        self._stream = process.stderr
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        for raw in self._stream:
            line = raw.decode(errors="replace")
            sys.stderr.write(line)
            sys.stderr.flush()
            self.lines.append(line.rstrip("\n"))

    def reason(self, timeout_s: float = 5.0) -> str:
        """The exception that ended the child's last traceback (once it has exited), else the last
        error line it wrote, else its last line."""
        self._thread.join(timeout_s)
        written = list(self.lines)
        starts = [n for n, line in enumerate(written) if "Traceback (most recent call last)" in line]
        if starts:
            # A traceback's frames are indented; the first line after them that is not is the error.
            for line in written[starts[-1] + 1 :]:
                if line.strip() and not line[0].isspace():
                    # The vLLM engine's message goes on with the server's log, read separately.
                    return line.split("; its last log lines")[0].strip()[:300]
        lines = [line.strip() for line in written if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.match(line) and "Traceback" not in line]
        if errors:
            return errors[-1][:300]
        return lines[-1][:300] if lines else "it wrote nothing"
