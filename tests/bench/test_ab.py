"""The A/B harness's bookkeeping: window order, latency by window, the summary and its table."""

from __future__ import annotations

from typing import Any

import pytest

from bench.ab import abba, main, markdown, summary, window_latency


def test_windows_alternate_abba() -> None:
    assert abba(1) == ["A", "B"]
    assert abba(3) == ["A", "B", "B", "A", "A", "B"]


def _window(setting: str, start: float, replica: float, machine: float,
            steal: float = 0.0) -> dict[str, Any]:  # fmt: skip
    return {"setting": setting, "from": start, "to": start + 10,
            "cpu": {"serve replica": replica, "api": 0.1}, "machine_cores": machine,
            "steal_cores": steal}  # fmt: skip


def test_latency_is_taken_by_ingest_time_per_window() -> None:
    windows = [_window("A", 100.0, 1.0, 1.5), _window("B", 110.0, 0.9, 1.4),
               _window("B", 130.0, 0.8, 1.4)]  # fmt: skip
    # A: 10 and 150 ms (scored after it ended); B: 20 ms; the frame at 120 s is in none.
    scored = [(101.0, 101.010), (109.9, 110.050), (110.0, 110.020), (120.0, 120.5)]
    window_latency(windows, scored)
    assert windows[0]["frames"] == 2 and windows[1]["frames"] == 1
    assert windows[0]["p50_ms"] == pytest.approx(80.0)
    assert windows[1]["p99_ms"] == pytest.approx(20.0)
    assert windows[2] | {"frames": 0, "p50_ms": None, "p99_ms": None} == windows[2]


def test_summary_and_table_compare_the_settings_pair_by_pair() -> None:
    windows = [_window("A", 0, 1.00, 1.6, 0.1), _window("B", 10, 0.90, 1.5, 0.3),
               _window("B", 20, 1.10, 1.6, 0.1), _window("A", 30, 1.05, 1.6, 0.5)]  # fmt: skip
    window_latency(windows, [(1, 1.05), (11, 11.04), (21, 21.03), (31, 31.06)])
    s = summary(windows)
    assert s["A"]["replica_cores"] == pytest.approx(1.025)
    assert s["B"]["replica_cores"] == pytest.approx(1.0)
    assert s["B"]["p99_ms"] == pytest.approx([40.0, 30.0])
    assert (s["pairs_b_lower_replica_cpu"], s["pairs"]) == (1, 2)
    report = {"a": {}, "b": {"batch_wait_timeout_s": 0.005}, "rate": 2000.0, "window_s": 10.0,
              "summary": s, "windows": windows, "roles": ["api", "serve replica"],
              "command": "python -m bench.ab", "machine": "2 CPUs"}  # fmt: skip
    table = markdown(report)
    assert "| A | 1.025 | 1.60 | 0.30 | 55.0 | 50, 60 |" in table
    assert "B used less replica CPU than A in 1 of 2 pairs." in table
    assert "| 2 | B | 1 | 40.0 | 40.0 | 0.100 | 0.900 | 1.50 | 0.30 |" in table


@pytest.mark.parametrize(
    ("argv", "reason"),
    [(["--window", "1"], "--window must be longer"), (["--b", "{batch: 1}"], "--b is not JSON"),
     (["--a", "[1]"], "--a must be a JSON object")],
)  # fmt: skip
def test_bad_arguments_are_refused_with_a_reason(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert reason in capsys.readouterr().err
