"""The web extension's JavaScript logic under node's own test runner (tests/js/)."""
import shutil
import subprocess

import pytest
from packloader import PACK_ROOT


def test_javascript_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the web extension's unit tests (tests/js/) need it")
    files = sorted(str(path.relative_to(PACK_ROOT)) for path in (PACK_ROOT / "tests" / "js").glob("*.test.mjs"))
    assert files
    # Files, not the folder: node 18-20 read a folder argument, later versions take globs.
    result = subprocess.run([node, "--test", *files], cwd=PACK_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_extension_imports_resolve_where_comfyui_serves_them():
    """ComfyUI serves WEB_DIRECTORY at /extensions/<pack>/: an import must reach the frontend's
    /scripts/ shims or a file of the pack (a wrong ../ count 404s and the extension never loads)."""
    import posixpath
    import re

    from packloader import load_pack

    web_root = PACK_ROOT / load_pack().WEB_DIRECTORY
    scripts = sorted(web_root.rglob("*.js"))
    assert scripts
    for script in scripts:
        served = "/extensions/pack/" + script.relative_to(web_root).as_posix()
        for target in re.findall(r'^\s*import\s[^;]*?from\s+"([^"]+)"', script.read_text(), flags=re.M | re.S):
            url = posixpath.normpath(posixpath.join(posixpath.dirname(served), target))
            if url.startswith("/scripts/"):
                assert url in ("/scripts/app.js", "/scripts/api.js"), f"{script.name}: {target} -> {url}"
            else:
                assert url.startswith("/extensions/pack/"), f"{script.name}: {target} leaves the pack ({url})"
                assert (web_root / url.removeprefix("/extensions/pack/")).is_file(), f"{script.name}: {target} missing"
