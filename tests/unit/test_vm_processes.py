"""The guest agent's process lines (``hutch top`` of a microVM container) as ``ps -ef`` rows."""

from hutch.vm.processes import parse_line


def test_a_line_becomes_ps_columns_with_the_guests_clock_ticks():
    row = parse_line("1000\t7\t1\t36612\tsh -c sleep 1; echo\tdone")
    assert row == {
        "UID": "1000",
        "PID": "7",
        "PPID": "1",
        "TIME": "00:06:06",
        "CMD": "sh -c sleep 1; echo\tdone",
    }


def test_malformed_lines_are_skipped():
    assert parse_line("") is None
    assert parse_line("x\t1\t0\t0\tcmd") is None
    assert parse_line("0\t1\t0\t0") is None
