"""proc.run following a program's stderr line by line: each line is heard as it comes, lines that are only progress
stay out of the failure message, and a listener's failure or undecodable bytes never stall the program."""

from __future__ import annotations

import sys

import pytest

from pytest_dbsnap.core.proc import TAIL_LINES, run
from pytest_dbsnap.errors import ToolError

# Many progress lines, then the error, then more progress (as a parallel pg_restore's other workers go on).
NOISY = f"""
import sys
for n in range({5 * TAIL_LINES}):
    print(f"tool: processing item {{n}}", file=sys.stderr)
sys.stderr.buffer.write(b"tool: error: relation \\xff already exists\\n")
print("Command was: CREATE TABLE t (id int);", file=sys.stderr)
for n in range({2 * TAIL_LINES}):
    print(f"tool: processing item {{n}} after", file=sys.stderr)
print("the answer")
sys.exit(3)
"""


def test_progress_lines_are_heard_and_left_out_of_the_failure_message() -> None:
    heard: list[str] = []

    def only_errors(line: str) -> bool:
        heard.append(line)
        return not line.startswith("tool: processing")

    with pytest.raises(ToolError) as failed:
        run([sys.executable, "-c", NOISY], what="the noisy tool", stderr_line=only_errors)
    message = str(failed.value).split("Its last output lines:\n", 1)[1]  # (the command quoted before it)
    assert "tool: error: relation \ufffd already exists" in message
    assert "Command was: CREATE TABLE t (id int);" in message
    assert "processing item" not in message
    assert len(heard) == 7 * TAIL_LINES + 2
    assert failed.value.returncode == 3


def test_a_listener_that_fails_keeps_the_line_and_the_program_runs_to_its_end() -> None:
    def broken(line: str) -> bool:
        raise ValueError(line)

    result = run(
        [sys.executable, "-c", "import sys\nfor n in range(20000): print('x' * 80, file=sys.stderr)\nprint('done')"],
        what="a chatty tool",
        stderr_line=broken,
        timeout=60,
    )
    assert result.stdout == "done\n"
    assert result.stderr.count("x" * 80) == 10 * TAIL_LINES  # kept, up to the bound
