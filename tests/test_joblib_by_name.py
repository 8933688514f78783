"""``import stepdown`` is enough for ``Parallel(backend="stepdown")``, in either import order,
in joblib's worker processes too, and never imports joblib itself.

Each case runs in a fresh interpreter: what is imported, and in which order, is the point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import stepdown

ROOT = Path(__file__).resolve().parent.parent
SRC = Path(stepdown.__file__).resolve().parent.parent


def run_python(code: str, *flags: str, **kwargs: Any) -> Any:
    """Run ``code`` in a fresh python from the repository root; its last stdout line is JSON."""
    done = subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        **kwargs,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(150)
def test_import_stepdown_then_joblib() -> None:
    out = run_python(
        """
        import importlib, json, sys
        import stepdown
        before = "joblib" in sys.modules
        import joblib
        from joblib import Parallel, delayed, parallel_config
        lazy = "stepdown.integrations.joblib" not in sys.modules
        with parallel_config(backend="stepdown", n_jobs=2, ladder=["thread:2"]) as config:
            results = Parallel()(delayed(abs)(-i) for i in range(10))
        hooks = [type(f).__module__ for f in sys.meta_path if "stepdown" in type(f).__module__]
        loader = type(joblib.__spec__.loader).__name__, type(joblib.__loader__).__name__
        importlib.reload(joblib)
        importlib.reload(stepdown)
        again = Parallel(n_jobs=2, backend="stepdown", ladder=["thread:2"])(
            delayed(abs)(-i) for i in range(3))
        print(json.dumps({
            "joblib_before": before, "lazy": lazy, "results": results, "hooks": hooks,
            "loader": loader, "backend": type(config["backend"]).__name__, "again": again,
        }))
        """
    )
    assert out["joblib_before"] is False  # import stepdown did not import joblib
    assert out["lazy"] is True  # nor the backend: it loads when a Parallel call names it
    assert out["results"] == list(range(10))
    assert out["backend"] == "StepdownBackend"
    assert out["hooks"] == []  # the finder left sys.meta_path once joblib was imported
    assert out["loader"] == ["SourceFileLoader", "SourceFileLoader"]  # joblib's own again
    assert out["again"] == [0, 1, 2]  # after importlib.reload of joblib and of stepdown


@pytest.mark.timeout(150)
def test_import_joblib_then_stepdown() -> None:
    out = run_python(
        """
        import json
        import joblib
        from joblib import Parallel, delayed
        import stepdown
        with joblib.parallel_backend("stepdown", n_jobs=2, ladder=["thread:2"]) as (b, n):
            results = Parallel()(delayed(abs)(-i) for i in range(5))
        print(json.dumps({"results": results, "report": str(b.last_report)}))
        """
    )
    assert out["results"] == [0, 1, 2, 3, 4]
    assert "(profile " in out["report"] and "thread(2)" in out["report"]


@pytest.mark.timeout(150)
def test_threads_importing_joblib_at_once_all_see_the_name() -> None:
    out = run_python(
        """
        import json, sys, threading
        import stepdown
        barrier = threading.Barrier(8)
        seen = []
        def importer():
            barrier.wait()
            import joblib.parallel
            seen.append("stepdown" in joblib.parallel.BACKENDS)
        threads = [threading.Thread(target=importer) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        hooks = [f for f in sys.meta_path if "stepdown" in type(f).__module__]
        print(json.dumps({"seen": seen, "hooks": len(hooks)}))
        """
    )
    assert out == {"seen": [True] * 8, "hooks": 0}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("outer", ["loky", "multiprocessing"])
def test_nested_parallel_by_name_in_a_worker(outer: str) -> None:
    """A task from a module that never imports stepdown names the backend in a worker: a fresh
    loky interpreter, or a forked multiprocessing worker."""
    out = run_python(
        f"""
        import json, os
        # Two workers' nested runs at once would share the host budget (two slots here), and
        # one could be granted fewer threads than it asks for: not what this test is about.
        os.environ["STEPDOWN_BUDGET"] = "off"
        import stepdown
        from joblib import Parallel, delayed
        from tests.support.joblib_nested import nested
        got = Parallel(n_jobs=2, backend={outer!r})(delayed(nested)(i) for i in range(2))
        print(json.dumps({{"parent": os.getpid(), "got": got}}))
        """
    )
    for task in out["got"]:
        assert task["pid"] != out["parent"]  # it ran in a worker process
        assert task["backend"] == "StepdownBackend"
        assert task["inner_pids"] == [task["pid"]]  # the thread rung, in that worker
        assert "thread(2)" in task["report"], task["report"]


@pytest.mark.timeout(60)
def test_without_joblib_installed(tmp_path: Path) -> None:
    """-I -S: no site-packages, so no joblib; stepdown's own source is put on the path."""
    out = run_python(
        f"""
        import json, sys
        sys.path.insert(0, {str(SRC)!r})
        import stepdown
        try:
            import joblib
        except ModuleNotFoundError as exc:
            error = [type(exc).__name__, exc.name]
        else:
            error = None
        print(json.dumps({{"error": error, "loaded": "joblib" in sys.modules}}))
        """,
        "-I",
        "-S",
        env={},
    )
    assert out == {"error": ["ModuleNotFoundError", "joblib"], "loaded": False}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("order", ["stepdown first", "joblib first"])
def test_a_joblib_without_the_backend_api_still_imports(tmp_path: Path, order: str) -> None:
    """A joblib that stepdown cannot work with (here a bare one on the path) still imports,
    and so does stepdown; a warning says what is wrong."""
    (tmp_path / "joblib").mkdir()
    (tmp_path / "joblib" / "__init__.py").write_text('__version__ = "0.1"\n')
    first, second = ("stepdown", "joblib") if order == "stepdown first" else ("joblib", "stepdown")
    out = run_python(
        f"""
        import json, sys, warnings
        sys.path.insert(0, {str(tmp_path)!r})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import {first}
            import {second}
        import joblib
        print(json.dumps({{"file": joblib.__file__, "warnings": [str(w.message) for w in caught]}}))
        """
    )
    assert out["file"].startswith(str(tmp_path))
    (warning,) = out["warnings"]
    assert "stepdown could not register the joblib backend 'stepdown' with joblib 0.1" in warning
    assert "pip install 'joblib>=1.5,<1.7'" in warning
