"""TensorFlow's native log lines are dropped from descriptor 2; everything else reaches it intact."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r'''
import os, sys, time
from training.native_logs import quiet_native_logs
with quiet_native_logs():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1796004959.528768   28682 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"[   1.0 s] fitting nn\n")
    os.write(2, b"I00")                      # a native line arriving in pieces
    time.sleep(0.05)
    os.write(2, b"00 00:00:1.5   7 cpu_feature_guard.cc:210] noise\nW0000 00:00:1.6   7 a.cc:1] more noise\n")
    os.write(2, b"E0000 00:00:1.7   7 b.cc:2] a native error stays\n")
    print("python warning", file=sys.stderr)
    os.write(2, b"predicting:  10%|#")          # a progress bar: no newline, redrawn with \r
    os.write(2, b"\rpredicting: 100%|##########\n")
    os.write(2, b"Info from a library\n")
    os.write(2, b"I am not a log line\n")
os.write(2, b"after the block\n")
'''


def test_native_info_and_warning_lines_are_dropped_and_the_rest_kept_in_order():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.decode() == ("[   1.0 s] fitting nn\n"
                                   "E0000 00:00:1.7   7 b.cc:2] a native error stays\n"
                                   "python warning\n"
                                   "predicting:  10%|#\rpredicting: 100%|##########\n"
                                   "Info from a library\n"
                                   "I am not a log line\n"
                                   "after the block\n")


def test_disabled_changes_nothing():
    script = ("import os\nfrom training.native_logs import quiet_native_logs\nwith quiet_native_logs(False):\n"
              "    os.write(2, b'I0000 00:00:1.5   7 port.cc:153] oneDNN\\n')\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert res.stderr.decode() == "I0000 00:00:1.5   7 port.cc:153] oneDNN\n"
