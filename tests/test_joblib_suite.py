"""joblib's own ``joblib/test/test_parallel.py``, parametrized over the registered backends,
passes for ``"stepdown"`` against the installed joblib.

It runs in a child pytest whose only addition is :mod:`tests.support.joblib_suite_plugin`: it
imports ``stepdown`` (nothing more) before joblib's module is collected and keeps the tests
parametrized with the backend, by name or as an instance. The child's wall time is mostly its
exit: joblib's ``test_abort_backend`` leaves ``time.sleep(10)`` batches running when a task
fails (stepdown lets running batches finish where loky kills its workers; docs/joblib.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = Path(joblib.__file__).parent / "test" / "test_parallel.py"


@pytest.mark.timeout(400)
def test_joblibs_own_parallel_suite_passes_for_stepdown(tmp_path: Path) -> None:
    if not SUITE.exists():
        pytest.skip(f"this joblib ({joblib.__version__}) is installed without its tests")
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")  # not the project's: its options are not joblib's
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(SUITE),
            "-c",
            str(ini),
            "--rootdir",
            str(tmp_path),
            "-p",
            "tests.support.joblib_suite_plugin",
            "-p",
            "no:cacheprovider",
            "--timeout",
            "60",
            "-q",
            "-rfE",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=360,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", summary)}
    print(f"joblib {joblib.__version__} test_parallel.py for 'stepdown': {summary}")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) == 0, summary
    assert counts.get("skipped", 0) == 0, summary  # nothing is excluded
    # test_nested_loop alone is 2 x 6 of them; simple_parallel 2 x 12; and so on.
    assert counts.get("passed", 0) >= 90, summary
