"""The interpreter's malloc_trim policy (RunOptions.malloc_trim_slack_bytes): it trims only
when the process holds more than the slack beyond its live tensors, and its floor follows what
a trim could not return, so it never trims over and over in vain. RSS is scripted here."""
from __future__ import annotations

import numpy as np
import pytest

import onnxstream_py
from onnxstream_py import interpreter, malloc

MiB = 1 << 20


def test_trimmer_policy(monkeypatch):
    rss = [100 * MiB]
    trims = []

    def fake_trim():
        trims.append(rss[0])
        rss[0] = max(rss[0] - 40 * MiB, 120 * MiB)     # a trim returns up to 40 MiB, never below 120
        return True

    monkeypatch.setattr(interpreter, "current_rss_bytes", lambda: rss[0])
    monkeypatch.setattr(malloc, "trim", fake_trim)
    env = {"a": np.zeros(MiB // 4, np.float32)}         # 1 MiB live
    t = interpreter._Trimmer(48 * MiB, env)
    assert t.floor == 99 * MiB
    for value, trimmed in ((140, False), (147, False), (149, True), (150, False), (160, False), (175, True)):
        rss[0] = value * MiB
        before = len(trims)
        t.after_free(env)
        assert (len(trims) > before) == trimmed, value
    # 149 -> trimmed to 120: floor 119; 160 is within 119 + 48; 175 is not
    assert t.trims == 2 and t.floor == 134 * MiB     # 175 trimmed to 135, minus 1 MiB live


def test_trim_option_and_glibc():
    assert onnxstream_py.RunOptions().malloc_trim_slack_bytes == 24 * MiB
    onnxstream_py.RunOptions(malloc_trim_slack_bytes=None)
    with pytest.raises(ValueError, match="malloc_trim_slack_bytes"):
        onnxstream_py.RunOptions(malloc_trim_slack_bytes=-1)
    assert malloc.trim() == malloc.available()
