"""Which implementation runs, and the switch between them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import tel400
from tel400 import _impl

from .conftest import ROOT


def run(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TEL400_NO_EXTENSIONS"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=environment, timeout=120, cwd=ROOT,
    )


@pytest.mark.skipif(bool(os.environ.get("TEL400_NO_EXTENSIONS")), reason="the reference was asked for")
def test_the_compiled_extension_was_built_and_is_used():
    """CI fails here when the extension did not build."""
    assert tel400.IMPLEMENTATION == "cython"
    assert set(_impl.ENGINES) == {"python", "cython"}
    router = tel400.Router(tel400.PlanSet.from_dict({"numbers": [{"number": "4001012345"}]}))
    assert router.implementation == "cython"


def test_no_extensions_forces_the_reference():
    result = run(
        """
        import tel400
        from tel400 import _impl
        print(tel400.IMPLEMENTATION, sorted(_impl.ENGINES), type(tel400.open_counters(None)).__module__)
        """,
        TEL400_NO_EXTENSIONS="1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["python", "['python']", "tel400.counters"]
    assert "Warning" not in result.stderr


def test_a_missing_extension_falls_back_with_one_warning():
    result = run(
        """
        import sys
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.startswith("tel400._fast._"):
                    raise ImportError(f"no module named {name!r} (simulated)")
                return None
        sys.meta_path.insert(0, Missing())
        import tel400
        import tel400.numbers, tel400.router
        print(tel400.IMPLEMENTATION)
        print(tel400.normalize("+86 139 0101 2345"))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["python", "13901012345"]
    assert result.stderr.count("RuntimeWarning") == 1
    assert "compiled hot path is not available" in result.stderr


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="not available"):
        tel400.Router(tel400.PlanSet(), implementation="fortran")


def test_a_compiled_twin_that_cannot_be_imported_gives_its_reference_with_a_warning(monkeypatch):
    reference = object()
    monkeypatch.setattr(_impl, "IMPLEMENTATION", "cython")
    with pytest.warns(RuntimeWarning, match="the twin is not available"):
        assert _impl.compiled_twin("_no_such_twin", None, reference, "the twin") is reference
    monkeypatch.setattr(_impl, "IMPLEMENTATION", "python")
    assert _impl.compiled_twin("_plans", None, reference, "the twin") is reference  # the reference engine: never the twin
