"""Log lines stay whole when several processes share one stderr (workers, the config child).

print() writes a message and its newline in two calls, so two processes appending to one file
(or one journald stream) could glue lines together and break JSON lines; lbd writes each line
in one call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WRITER = """
import sys
from lbd import log
import structlog
log.configure("json")
logger = structlog.get_logger()
for i in range(3000):
    logger.info("line", writer=sys.argv[1], i=i, pad="x" * 200)
"""


def test_concurrent_writers_never_glue_lines(tmp_path: Path) -> None:
    out = tmp_path / "shared.log"
    with open(out, "ab") as f:
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(n)], stderr=f) for n in range(4)]
        for p in procs:
            assert p.wait(60) == 0
    lines = out.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # raises on a glued or torn line
    assert len(entries) == 4 * 3000
    assert {(e["writer"], e["i"]) for e in entries} == {(str(n), i) for n in range(4) for i in range(3000)}
