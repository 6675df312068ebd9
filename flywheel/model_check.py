"""Whether `flywheel up` can serve the configured model, and why not: one line a person can act on.

A model that cannot be had stops `flywheel up` (flywheel/up.py) rather than being replaced by the
bootstrapped one: a team would be served junk and the trainer would learn from it. Two checks:
before anything starts (the directory or the Hub id), and while the backend loads it (its log's
last error, when it exits while starting).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

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
        """The last error line the child wrote (after it exited), else its last line."""
        self._thread.join(timeout_s)
        lines = [line.strip() for line in self.lines if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.match(line) and "Traceback" not in line]
        if errors:
            return errors[-1][:300]
        return lines[-1][:300] if lines else "it wrote nothing"
