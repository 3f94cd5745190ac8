"""Keep TensorFlow's native log lines out of a user's terminal.

TensorFlow writes some lines from C++ before its logging is configured (``I0000 ... port.cc:153]
oneDNN custom operations are on ...`` and absl's ``WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR``), straight to file descriptor 2:
``TF_CPP_MIN_LOG_LEVEL`` does not reach them (tensorflow/tensorflow#100442), and Python's
``sys.stderr`` never sees them.  ``quiet_native_logs`` passes descriptor 2 through a pipe for the
duration of a ``with`` block and drops those lines only: native info and warning lines (``I``/``W`` +
month-day + time + thread + ``file:line]``) and absl's notice.  Everything else — progress lines,
warnings written by Python, native *error* lines — is forwarded as it arrives, partial lines (progress
bars redrawn with ``\\r``) included.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: glog/absl line prefix of an info or warning line: severity, MMDD, time (seconds since the epoch before
#: absl is initialized), thread id, file:line]
_NATIVE = re.compile(rb"[IW]\d{4} \d\d:\d\d:\d+(?:\.\d+)?\s+\d+ [^\s\]]+:\d+\] ")
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
#: a line start not yet decided is held at most this long (bytes) before it is forwarded
_MAX_HELD = 256


def is_noise(line: bytes) -> bool:
    """Whether a complete line (with or without its newline) is a native info/warning line or absl's notice."""
    return bool(_NATIVE.match(line)) or line.rstrip(b"\r\n") == _ABSL_NOTICE


def _could_be_noise(start: bytes) -> bool:
    """Whether the beginning of a line may still turn out to be noise (then wait for the rest of it)."""
    if len(start) > _MAX_HELD:
        return False
    return _ABSL_NOTICE.startswith(start) or bool(re.fullmatch(rb"[IW]\d{0,4}(?: [^\r]*)?", start))


def _pump(read_fd: int, out_fd: int) -> None:
    buf, at_line_start = b"", True
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        buf += chunk
        while buf:
            nl = buf.find(b"\n")
            if at_line_start:
                if nl < 0:
                    if _could_be_noise(buf):
                        break  # wait for the rest of the line
                    os.write(out_fd, buf)
                    buf, at_line_start = b"", False
                    break
                line, buf = buf[:nl + 1], buf[nl + 1:]
                if not is_noise(line):
                    os.write(out_fd, line)
            else:  # the rest of a line already forwarded
                if nl < 0:
                    os.write(out_fd, buf)
                    buf = b""
                    break
                os.write(out_fd, buf[:nl + 1])
                buf, at_line_start = buf[nl + 1:], True
    if buf and not is_noise(buf):
        os.write(out_fd, buf)
    os.close(read_fd)


@contextmanager
def quiet_native_logs(enabled: bool = True) -> Iterator[None]:
    """Drop TensorFlow's native info/warning lines from descriptor 2 inside the block (``enabled=False``:
    change nothing, e.g. for ``--verbose``)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, real), name="native-log-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last write end closes: the pump drains it and stops
        pump.join(timeout=10)
        os.close(real)
