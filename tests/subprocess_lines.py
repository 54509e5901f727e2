"""Reading a child process's stdout line by line with a deadline (for crash tests)."""

import queue
import threading
import time


class LineReader:
    """Collects a process's stdout lines in a thread, so the test can wait for one with a deadline."""

    def __init__(self, stream):
        self.lines: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # EOF

    def wait_for(self, marker: str, timeout_s: float) -> tuple[list[str], bool]:
        seen, deadline = [], time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return seen, False
            if line is None:
                return seen, False
            seen.append(line)
            if marker in line:
                return seen, True
