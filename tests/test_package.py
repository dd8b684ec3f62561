"""`import fcnseg` gives the whole public API that docs/api.md lists, without importing the heavy parts."""
import re
import subprocess
import sys
from pathlib import Path

import fcnseg

ROOT = Path(__file__).resolve().parents[1]


def test_every_name_of_the_api_doc_is_reachable():
    doc = (ROOT / "docs" / "api.md").read_text()
    headings = re.findall(r"^## `(?:fcnseg\.)?([A-Za-z_][\w]*)", doc, flags=re.M)
    assert {"densify", "DenseClassifier", "Optimizations", "patchwise", "compare_dense", "checkpoint",
            "runtime"} <= set(headings)
    for name in headings + list(fcnseg.__all__):
        assert getattr(fcnseg, name) is not None, name


def test_subpackages_are_imported_on_first_use():
    code = ("import sys, fcnseg; heavy = [m for m in ('torchvision', 'fcnseg.zoo', 'fcnseg.train', 'PIL') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "assert 'lenet5' in fcnseg.zoo.names() and 'torchvision' in sys.modules; "
            "assert fcnseg.densify(fcnseg.zoo.create('lenet5', num_classes=3, in_channels=1)).optimizations "
            "== fcnseg.Optimizations()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
