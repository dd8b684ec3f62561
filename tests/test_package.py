"""`import fcnseg` gives the whole public API that docs/api.md lists, without importing the heavy parts."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


# ------------------------------------------------------------------ the core install and its extras
CORE = {"torch", "torchvision", "numpy", "safetensors"}  # densify, patchwise, compare_dense, the zoo
# every optional package the library imports: blocked, the core still works
OPTIONAL = ("cv2", "albumentations", "matplotlib", "segmentation_models_pytorch", "timm", "tifffile", "zarr",
            "imagecodecs", "openslide", "onnx", "onnxruntime", "tensorboard", "hydra", "omegaconf", "tqdm")


def _pyproject():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement):
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")


def _extra_distributions(extras, name, seen=()):
    """The distributions an extra installs, through the extras it includes (fcnseg[a,b])."""
    out = set()
    for req in extras[name]:
        m = re.match(r"fcnseg\[([\w,\-]+)\]", req)
        if m:
            for inner in m.group(1).split(","):
                if inner not in seen:
                    out |= _extra_distributions(extras, inner, (*seen, name))
        else:
            out.add(_name(req))
    return out


def test_core_dependencies_stay_light_and_uncapped():
    project = _pyproject()
    assert {_name(r) for r in project["dependencies"]} <= CORE, project["dependencies"]
    requirements = project["dependencies"] + [r for reqs in project["optional-dependencies"].values() for r in reqs]
    capped = [r for r in requirements if re.search(r"<|==|~=", r.split(";")[0])]
    assert not capped, f"upper bounds belong in CI's constraints, not the metadata: {capped}"


def test_every_optional_package_names_an_extra_that_installs_it():
    from fcnseg.extras import PACKAGES

    extras = _pyproject()["optional-dependencies"]
    assert {"infer", "train", "smp", "large", "slide", "export", "tensorboard", "all", "dev"} <= set(extras)
    for module, (distribution, extra) in PACKAGES.items():
        assert distribution in _extra_distributions(extras, extra), (module, extra)
        assert distribution in _extra_distributions(extras, "all"), (module, "all")
    assert {"pytest", "ruff"} | _extra_distributions(extras, "all") <= _extra_distributions(extras, "dev")


def test_a_missing_extra_is_named_with_its_pip_command(monkeypatch):
    from fcnseg.data.augment import build_transform
    from fcnseg.extras import MissingExtraError, require

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"format=onnx needs the package onnx .*pip install 'fcnseg\[export\]'"):
        require("onnx", "format=onnx")
    monkeypatch.setitem(sys.modules, "albumentations", None)
    with pytest.raises(MissingExtraError, match=r"fcnseg\[train\]") as info:
        build_transform({"transforms": [{"name": "HorizontalFlip", "p": 0.5}]})
    assert info.value.extra == "train" and info.value.name == "albumentations"


def test_the_core_runs_without_any_extra():
    code = ("import sys\n"
            f"for name in {OPTIONAL!r}: sys.modules[name] = None\n"
            "import torch, fcnseg\n"
            "net = fcnseg.zoo.create('lenet5', num_classes=3, in_channels=1).double().eval()\n"
            "x = torch.randn(1, 1, 40, 36, dtype=torch.float64)\n"
            "c = fcnseg.compare_dense(fcnseg.densify(net), net, x)\n"
            "assert c.max_abs < 1e-12 and c.label_agreement == 1.0, c\n"
            "resnet = fcnseg.zoo.create('resnet18', num_classes=3, width_mult=1 / 16, padding='same')\n"
            "assert resnet(torch.randn(1, 3, 64, 64)).shape == (1, 3)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("python3 -m venv") and "[dev]" in line)
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_a_missing_package_under_another_is_named_too(monkeypatch):
    from fcnseg.extras import MissingExtraError, require

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(MissingExtraError, match=r"fcnseg\[tensorboard\]") as info:
        require("torch.utils.tensorboard", "logger=tensorboard")
    assert info.value.name == "tensorboard"


def test_no_other_module_defines_these_helpers():
    """One home per concern: each runtime helper, and the palette, is defined in its own module only."""
    root = os.path.dirname(fcnseg.__file__)
    homes = {"def pick_device": "runtime/device.py", "def dist_env": "runtime/device.py",
             "init_process_group(": "runtime/device.py", "torch.autocast(": "runtime/precision.py",
             "def seed_all": "runtime/seeding.py", "def rng_state": "runtime/seeding.py",
             "def atomic_path": "runtime/files.py", "os.replace(": "runtime/files.py",
             "def default_palette": "data/palette.py", "def colorize": "data/palette.py"}
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if f.endswith(".py"):
                text = open(path, encoding="utf-8").read()
                found += [(rel, n) for n, home in homes.items() if n in text and rel != home]
    assert not found, f"helpers re-implemented outside their home module: {found}"


def _fcnseg_import_graph():
    """{module: the fcnseg modules it imports}, read from the source (imports inside functions too)."""
    import ast
    root = Path(fcnseg.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t.startswith("fcnseg") and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def test_the_import_graph_has_no_cycle_and_no_arrow_back_up():
    """Data flows downhill: no module imports the package it sits in (or an ancestor), and no
    chain of imports comes back to where it started."""
    graph = _fcnseg_import_graph()
    upward = sorted((m, d) for m, deps in graph.items() for d in deps if m.startswith(d + "."))
    assert not upward, f"modules importing an enclosing package: {upward}"
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_is_over_450_lines():
    root = Path(fcnseg.__file__).parent
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, f"split these modules by concern: {long}"


def test_the_tree_is_clean_under_the_projects_ruff_configuration():
    ruff = pytest.importorskip("ruff", reason="ruff comes with the dev extra")
    root = Path(__file__).resolve().parents[1]
    binary = Path(ruff.find_ruff_bin())
    result = subprocess.run([str(binary), "check", "--no-cache", "fcnseg", "tools", "tests"], cwd=root,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_runtime_name_the_code_uses_exists():
    """`runtime.<name>` calls on paths the default suite does not run (torchrun, CUDA) still resolve."""
    import fcnseg.runtime as runtime
    root = Path(fcnseg.__file__).resolve().parents[1]
    used = set()
    for path in [*root.joinpath("fcnseg").rglob("*.py"), *root.joinpath("tools").glob("*.py")]:
        used |= set(re.findall(r"(?<![.\w])runtime\.([A-Za-z_]\w*)", path.read_text(encoding="utf-8")))
    used -= {"device", "precision", "memory", "seeding", "files"}  # the modules themselves
    missing = sorted(n for n in used if not hasattr(runtime, n))
    assert not missing, f"fcnseg.runtime has no {missing}"
