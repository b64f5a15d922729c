"""The web extension's JavaScript logic under node's own test runner (tests/js/)."""
import shutil
import subprocess

import pytest
from packloader import PACK_ROOT


def test_javascript_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the web extension's unit tests (tests/js/) need it")
    result = subprocess.run([node, "--test", "tests/js/"], cwd=PACK_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout
