"""The benchmarks' load generators run as a line's clients: at a lower CPU priority, on a
thread of their own, so that the thread that started them keeps its own. A report's command
can be pasted into a shell."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from bench.common import CLIENT_NICE, command_line, on_client_thread


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_a_client_thread_runs_at_the_client_nice_and_the_caller_keeps_its_own() -> None:
    caller = _nice()
    assert on_client_thread(_nice) == max(CLIENT_NICE, caller)
    assert _nice() == caller


def test_a_client_thread_raises_its_error_in_the_caller() -> None:
    def fail(what: str) -> None:
        raise ValueError(what)

    with pytest.raises(ValueError, match="no such frame"):
        on_client_thread(fail, "no such frame")


def test_the_recorded_command_quotes_what_a_shell_would_split_and_hides_the_data_path() -> None:
    argv = ["--b", '{"batch_wait_timeout_s": 0.005}', "--data-dir", "/d/mnist"]
    assert command_line("bench.ab", argv) == (
        """python -m bench.ab --b '{"batch_wait_timeout_s": 0.005}' --data-dir $DATA_DIR"""
    )
