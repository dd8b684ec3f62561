"""Every command the documentation shows runs: the shell commands of the fenced ```bash
(```sh, ```shell, ```console) blocks and the ```python blocks of README.md and docs/*.md.

The commands are read from the Markdown at collection time, so an edited doc is tested as
it now reads. One test per command (per `&&` part), its id the document and line
(`README.md:56`). Each runs in a quick form, in a copy of the project in a temporary
directory (data/ included, the demo dataset cut to a few images of its real size), never in
the repository itself:

- a tool's quick-check overrides from QUICK are set (replacing a value the command gives:
  the quick value is a cap), e.g. a two-step training;
- placeholders (PLACEHOLDERS: `data.root=PATH`, `data.num_classes=K`, `checkpoint=best.pt`)
  become tiny datasets written by the test and the demo checkpoint; the example inputs the
  docs name (`my.png`, `photos/`, ...) are created in the copy (make_inputs);
- a command that reads `outputs/<run>/...` first gets that run from the documented command
  that writes it (`hydra.run.dir=outputs/<run>`), in its quick form, once per test session;
- Python blocks of one document share one interpreter, in document order.

Markers. A command that cannot run here is marked in the document itself, with an HTML
comment on the line(s) directly above the block's opening fence (GitHub does not render
it). Each marker gives its reason, which the test reports:

    <!-- docs-test: skip: REASON -->                    every command of the block is skipped
    <!-- docs-test: skip "TEXT" ["TEXT2" ...]: REASON -->  the commands (or `&&` parts) that
                                                         contain one of the TEXTs are skipped
                                                         ('TEXT' in single quotes may hold ")
    <!-- docs-test: cuda "TEXT": REASON -->            those commands run only where CUDA is
                                                         available (else skipped with REASON)
    <!-- docs-test: replace "OLD" "NEW": REASON -->     the block runs with OLD replaced by NEW
                                                         (e.g. no pretrained-weight download)
    <!-- docs-test: given: CODE -->                      a Python fragment runs after CODE
                                                         (the names it assumes are defined)

A marker that matches nothing, an unknown directive or shell syntax the test cannot run
fails, so markers cannot go stale silently.

Logs of every command (stdout and stderr) and a summary.json with each command's time and
result go to $FCNSEG_DOCS_TEST_LOGS when set, else to docs-test-logs/ in the temporary copy.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, make_scenes, save_gray

pytestmark = pytest.mark.slow

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
PYTHON_LANGS = {"python", "py", "python3"}

# ------------------------------------------------------------------ quick forms
# Per tool: overrides set on every documented call (a value the command gives is replaced:
# the quick value is a cap). A tool may list alternatives, newest first: the first whose
# trainer.* keys all exist in conf/trainer/default.yaml is used (the training schedule moved
# from epochs to optimiser steps; either tree is tested as it is).
QUICK = {
    "tools/train.py": [["trainer.max_steps=2"],
                       ["trainer.epochs=1", "trainer.max_train_batches=2"]],
}
# A resumed run continues past the end of the quick run it resumes.
QUICK_RESUME = {
    "tools/train.py": [["trainer.max_steps=4"],
                       ["trainer.epochs=2"]],
}
# Per command: the quick forms take 10-80 s on 2 cores shared with other work (a sweep of four
# runs the longest).
TIMEOUT_S = {"tools/train.py": 240}
DEFAULT_TIMEOUT_S = 180
PYTHON_TIMEOUT_S = 180
# The whole module stops starting commands after this many seconds (.ci/run gives the docs
# test its own step of 1600 s). 43 commands ran in 794-1040 s on 2 cores under a load
# average of 7-9 (other work); $FCNSEG_DOCS_TEST_BUDGET_S overrides it.
BUDGET_S = int(os.environ.get("FCNSEG_DOCS_TEST_BUDGET_S", 1200))
# The demo dataset in the copy: its first images, real size (a training step sees the
# batch a user's step sees; validation and reports stay quick).
DEMO = "data/fashion_scenes"
DEMO_IMAGES = {"train": 16, "val": 8}
# Tiny datasets for placeholders (written into the copy by the `workspace` fixture).
FOLDER_DATA = "docs-test-data/folder"     # root/{train,val}/{images,masks}, 3 classes
PATCH_DATA = "docs-test-data/patches"     # root/{train,val}/<class>/*.png
FOLDER_CLASSES = 3
DEMO_CHECKPOINT = "outputs/demo/best.pt"  # README's set-up command writes it


def _data_root(args):
    return PATCH_DATA if "data=patches" in args else FOLDER_DATA


# (pattern matching one whole argument, replacement); a callable gets the command's args.
PLACEHOLDERS = [
    (r"data\.root=(PATH|/data/[\w./-]+)", lambda args: f"data.root={_data_root(args)}"),
    (r"data\.num_classes=K", lambda args: f"data.num_classes={FOLDER_CLASSES}"),
    (r"checkpoint=(PATH/)?best\.pt", lambda args: f"checkpoint={DEMO_CHECKPOINT}"),
]
# Shell syntax the test does not run (commands are started without a shell).
UNSUPPORTED = {"|", "||", ";", "&", ">", ">>", "<", "2>", "2>&1", "&>"}
LOGS_ENV = "FCNSEG_DOCS_TEST_LOGS"


# ------------------------------------------------------------------ extraction
@dataclasses.dataclass
class Item:
    doc: str            # path relative to the project root
    line: int           # the command's (or the Python block's first code) line
    kind: str           # "shell" | "python"
    text: str           # as written (a shell command: this `&&` part)
    args: list = dataclasses.field(default_factory=list)   # shell: the tokens of this part
    skip: str | None = None
    cuda: str | None = None
    error: str | None = None   # the test fails with this (bad marker, unsupported syntax)
    part: tuple | None = None  # (k, n) for the k-th of n `&&` parts
    source: str = ""           # python: the block after replace/given markers
    block: int = 0             # python: index among the document's Python blocks
    given: str = ""            # python: code run before the block (a `given` marker)

    @property
    def id(self):
        return f"{self.doc}:{self.line}" + (f"-part{self.part[0]}" if self.part else "")


MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
DIRECTIVE = re.compile(r"""^(skip|cuda|replace)((?:\s+(?:"[^"]*"|'[^']*'))*)\s*:\s*(\S.*)$""")
QUOTED = re.compile(r""""([^"]*)"|'([^']*)'""")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def _parse_markers(lines):
    """Marker comment lines -> list of (directive, [texts], reason) or (\"given\", code, None);
    raises ValueError naming a malformed one."""
    out = []
    for text in lines:
        body = MARKER.match(text).group(1)
        if body.startswith("given:"):
            out.append(("given", body[len("given:"):].strip(), None))
            continue
        m = DIRECTIVE.match(body)
        if not m:
            raise ValueError(f"unknown docs-test marker {text.strip()!r}; see tests/test_docs.py "
                             f"for the syntax (skip/cuda/replace/given, each with ': REASON')")
        out.append((m.group(1), [a or b for a, b in QUOTED.findall(m.group(2))], m.group(3)))
    return out


def _blocks(path):
    """(lang, first code line, code lines, marker lines) for each fenced block of a file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).lower()
        markers, k = [], i - 1
        while k >= 0 and MARKER.match(lines[k]):
            markers.insert(0, lines[k])
            k -= 1
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        yield lang, i + 2, lines[i + 1:j], markers
        i = j + 1


def _shell_commands(code, first, console):
    """(line, text) of each command: `\\` continuations joined, comment-only lines dropped;
    in a console block only `$ ` lines are commands."""
    buf, start = "", None
    for k, raw in enumerate(code):
        line = raw
        if console and not buf:
            stripped = line.lstrip()
            if not stripped.startswith("$ "):
                continue
            line = stripped[2:]
        if not buf:
            start = first + k
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        text = (buf + line).strip()
        buf = ""
        if text and not text.startswith("#"):
            yield start, text


def _select(markers, kind, text):
    return [(reason, texts) for d, texts, reason in markers if d == kind
            and (not texts or any(t in text for t in texts))]


def collect():
    items = []
    for path in DOCS:
        doc = str(path.relative_to(ROOT))
        python_index = 0
        for lang, first, code, marker_lines in _blocks(path):
            if lang not in SHELL_LANGS | PYTHON_LANGS:
                if marker_lines:
                    items.append(Item(doc, first, "shell", "", error=f"docs-test marker above a "
                                      f"```{lang} block, which the test does not run"))
                continue
            try:
                markers = _parse_markers(marker_lines)
            except ValueError as e:
                items.append(Item(doc, first, "shell", "", error=str(e)))
                continue
            used = set()
            if lang in PYTHON_LANGS:
                items.append(_python_item(doc, first, code, markers, used, python_index))
                python_index += 1
            else:
                for line, text in _shell_commands(code, first, lang == "console"):
                    items.extend(_shell_items(doc, line, text, markers, used))
            for n, (d, _texts, _) in enumerate(markers):
                if n not in used and d != "given":
                    items.append(Item(doc, first, "shell", "", error=f"docs-test marker "
                                      f"{marker_lines[n].strip()!r} matches no command of the "
                                      f"block below it; fix or remove it"))
    return items


def _mark_used(markers, used, kind, text):
    for n, (d, texts, _) in enumerate(markers):
        if d == kind and (not texts or any(t in text for t in texts)):
            used.add(n)


def _python_item(doc, first, code, markers, used, index):
    source = "\n".join(code)
    item = Item(doc, first, "python", source, block=index)
    for n, (d, texts, reason) in enumerate(markers):
        if d == "replace":
            if len(texts) != 2 or texts[0] not in source:
                item.error = (f"docs-test replace marker {texts} does not match the block "
                              f"(it needs \"OLD\" \"NEW\" with OLD in the block)")
                continue
            source = source.replace(texts[0], texts[1])
        elif d == "given":
            item.given = "\n".join(filter(None, [item.given, texts]))
        elif d == "skip":
            if texts:
                item.error = "a skip marker of a Python block takes no TEXT: the block runs whole"
            item.skip = reason
        elif d == "cuda":
            item.cuda = reason
        used.add(n)
    item.source = source
    return item


def _shell_items(doc, line, text, markers, used):
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError as e:
        return [Item(doc, line, "shell", text, error=f"cannot parse the command: {e}")]
    bad = sorted(set(tokens) & UNSUPPORTED)
    if bad:
        return [Item(doc, line, "shell", text, error=f"shell syntax {bad} is not run by the "
                     f"docs test (commands start without a shell); split the command or extend "
                     f"tests/test_docs.py")]
    parts, cur = [], []
    for t in tokens:
        if t == "&&":
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts.append(cur)
    raw_parts = [p.strip() for p in re.split(r"\s&&\s", text.split(" #")[0])]
    if len(raw_parts) != len(parts):
        raw_parts = [shlex.join(p) for p in parts]
    items = []
    for k, (args, raw) in enumerate(zip(parts, raw_parts), 1):
        item = Item(doc, line, "shell", raw, args=args,
                    part=(k, len(parts)) if len(parts) > 1 else None)
        for kind in ("skip", "cuda"):
            hits = _select(markers, kind, raw)
            if hits:
                setattr(item, kind, hits[0][0])
                _mark_used(markers, used, kind, raw)
        for n, (d, _, _) in enumerate(markers):
            if d in ("replace", "given"):
                item.error = f"docs-test {d} markers apply to Python blocks only"
                used.add(n)
        items.append(item)
    return items


ITEMS = collect()


# ------------------------------------------------------------------ the workspace
_COPY_SKIP = {".git", "outputs", "multirun", "runs", "build", "__pycache__", ".pytest_cache",
              "docs-test-logs"}


def _copy_ignore(directory, names):
    rel = Path(directory).resolve().relative_to(ROOT)
    skip = {n for n in names if n in _COPY_SKIP or n.startswith(".venv") or n.endswith(".egg-info")}
    if rel.parts[:2] == tuple(DEMO.split("/")) and rel.name in ("images", "masks"):
        keep = set(sorted(names)[:DEMO_IMAGES[rel.parent.name]])
        skip |= set(names) - keep
    if rel == Path("results"):
        skip.add("quick")
    return skip


def make_patch_data(root, size=44, n_train=6, n_val=2, seed=0):
    """root/{train,val}/{bright,dark}/*.png: gray patches of one size, class = brightness."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for name, level in (("bright", 190), ("dark", 70)):
            for i in range(n):
                img = np.clip(level + rng.normal(0, 20, (size, size)), 0, 255)
                save_gray(root / split / name / f"{name}{i}.png", img)
    return root


def make_inputs(ws):
    """The example inputs the docs name, made from the demo's validation images (gray,
    96x96): my.png, img.png (the region [100,100,24,24] lies inside it), photos/,
    slides/**/*.tif, big/."""
    val = sorted((ws / DEMO / "val" / "images").iterdir())
    arrays = [np.asarray(Image.open(p)) for p in val[:4]]
    mosaic = np.block([[arrays[0], arrays[1]], [arrays[2], arrays[3]]])  # 192x192
    save_gray(ws / "my.png", mosaic[36:60, 36:60])
    save_gray(ws / "img.png", mosaic[:128, :128])
    for k, name in enumerate(("photos/a.png", "photos/b.png", "slides/s1/t.tif",
                              "slides/s2/deep/u.tif", "big/mosaic.png")):
        save_gray(ws / name, mosaic if name.startswith("big/") else arrays[k % 4])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("docs") / "project"
    shutil.copytree(ROOT, ws, ignore=_copy_ignore, symlinks=True)
    make_scenes(ws / FOLDER_DATA, n_train=6, n_val=3)
    make_patch_data(ws / PATCH_DATA)
    make_inputs(ws)
    return ws


def _log_dir(ws):
    d = Path(os.environ.get(LOGS_ENV) or ws / "docs-test-logs")
    d.mkdir(parents=True, exist_ok=True)
    return d


# ------------------------------------------------------------------ quick forms
def _slug(item):
    return re.sub(r"[^\w.-]+", "_", item.id)


def _trainer_keys():
    text = (ROOT / "conf" / "trainer" / "default.yaml").read_text(encoding="utf-8")
    return set(re.findall(r"^(\w+):", text, re.M))


def _pick(alternatives):
    """The first override list whose trainer.* keys all exist in conf/trainer/default.yaml."""
    have = _trainer_keys()
    for overrides in alternatives:
        keys = [_key(o) for o in overrides]
        if all(k.split(".", 1)[1] in have for k in keys if k and k.startswith("trainer.")):
            return overrides
    raise AssertionError(f"none of the quick forms {alternatives} fits conf/trainer/default.yaml "
                         f"(keys {sorted(have)}); update QUICK in tests/test_docs.py")


def _key(arg):
    return arg.split("=", 1)[0].lstrip("+") if "=" in arg else None


def _set(args, overrides):
    """args with each key=value of overrides set (an existing value of that key replaced);
    flags are appended once."""
    keys = {_key(o) for o in overrides if _key(o)}
    kept = [a for a in args if _key(a) not in keys]
    return kept + [o for o in overrides if _key(o) or o not in kept]


def _program(args):
    """(env, argv, tool): leading VAR=value assignments, the program mapped to this
    interpreter, and the script it runs (tools/train.py, -m pytest, ...)."""
    env, k = {}, 0
    while k < len(args) and re.match(r"^[A-Z_][A-Z0-9_]*=", args[k]):
        name, value = args[k].split("=", 1)
        env[name] = value
        k += 1
    prog, rest = args[k], list(args[k + 1:])
    if re.fullmatch(r"(.*/)?python3?(\.\d+)?", prog):
        argv = [sys.executable]
    elif prog == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run"]
    else:
        argv = [prog]
    tool = next((a for a in rest if a.endswith(".py")), None)
    if tool is None and "-m" in rest[:1]:
        tool = "-m " + rest[1]
    return env, argv, rest, tool


def quick_form(item):
    """(env, argv, tool, timeout) of a shell item, ready to run in the workspace."""
    env, argv, rest, tool = _program(item.args)
    for pattern, repl in PLACEHOLDERS:
        rest = [repl(rest) if re.fullmatch(pattern, a) else a for a in rest]
    if tool in QUICK:
        rest = _set(rest, _pick(QUICK[tool]))
    if tool in QUICK_RESUME and any(a in ("resume=true", "resume=True") for a in rest):
        rest = _set(rest, _pick(QUICK_RESUME[tool]))
    if tool == "tools/train.py":  # every run in its own directory of the copy
        sweep = "-m" in rest or "--multirun" in rest
        key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
        if not any(_key(a) == key for a in rest):
            rest.append(f"{key}=outputs/docs-test/{_slug(item)}")
    return env, argv + rest, tool, TIMEOUT_S.get(tool, DEFAULT_TIMEOUT_S)


# ------------------------------------------------------------------ dependencies
RUN_DIR = re.compile(r"^hydra\.run\.dir=outputs/([\w.-]+)$")
READS = re.compile(r"\boutputs/([\w.-]+)/")


def _writes(item):
    """The outputs/<run> a documented (not resumed) training command writes."""
    if item.kind != "shell" or item.skip or item.error or "resume=true" in item.args:
        return None
    m = next((RUN_DIR.match(a) for a in item.args if RUN_DIR.match(a)), None)
    return m.group(1) if m else None


PRODUCERS = {}
for _it in ITEMS:
    _run = _writes(_it)
    if _run and _run not in PRODUCERS:
        PRODUCERS[_run] = _it


def _reads(item, argv_or_source):
    """The documented runs (outputs/<run>/) a command or Python source reads."""
    text = argv_or_source if isinstance(argv_or_source, str) else " ".join(
        a for a in argv_or_source if not re.match(r"\+*hydra\.(run|sweep)\.dir=", a))
    runs = set(READS.findall(text))
    if item.kind == "shell" and "resume=true" in item.args:
        runs |= {m.group(1) for a in item.args if (m := RUN_DIR.match(a))}
    return sorted(r for r in runs if PRODUCERS.get(r) is not item)


RESULTS = {}  # item id -> dict(result=passed|failed|skipped, seconds, ...)


def _ensure(runs, ws, item):
    """Make outputs/<run> exist for each run the item reads, by running its producer."""
    for run in runs:
        if (ws / "outputs" / run).exists():
            continue
        producer = PRODUCERS.get(run)
        if producer is None:
            pytest.fail(f"{item.id} reads outputs/{run}/, which no documented command writes "
                        f"(a training command with hydra.run.dir=outputs/{run} before it)")
        done = RESULTS.get(producer.id)
        if done is None:
            done = _run_shell(producer, ws)
        if done["result"] != "passed":
            pytest.fail(f"{item.id} reads outputs/{run}/, which {producer.id} "
                        f"({producer.text}) writes, and that command failed:\n{done['message']}")


# ------------------------------------------------------------------ running
def _env(extra=None):
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                HYDRA_FULL_ERROR="1", **(extra or {}))


_START = []  # when the module's first command started


class _BudgetSpent(Exception):
    """BUDGET_S is used up: the remaining commands fail without running."""


def _budgeted(timeout):
    """timeout, shortened to what is left of BUDGET_S; fails once the budget is spent."""
    if not _START:
        _START.append(time.perf_counter())
    left = BUDGET_S - (time.perf_counter() - _START[0])
    if left < 10:
        raise _BudgetSpent(f"the docs test's budget of {BUDGET_S} s is spent (BUDGET_S in "
                           f"tests/test_docs.py, or $FCNSEG_DOCS_TEST_BUDGET_S); this command "
                           f"was not run")
    return int(min(timeout, left))


def _execute(argv, ws, env, timeout):
    """(exit status or None on timeout, stdout, stderr, seconds); the whole process group is
    stopped on timeout (torchrun's workers included)."""
    timeout = _budgeted(timeout)
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(argv, cwd=ws, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as e:  # no such program: the shell's "command not found"
        return 127, "", f"cannot start {argv[0]}: {e}", time.perf_counter() - t0
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                out, err = p.communicate(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = None
    return rc, out or "", err or "", time.perf_counter() - t0


def _tail(text, lines):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _record(item, ws, shown, rc, out, err, seconds, timeout):
    log = _log_dir(ws) / f"{_slug(item)}.log"
    log.write_text(f"$ {shown}\n# exit status {rc} after {seconds:.1f} s\n--- stdout\n{out}\n"
                   f"--- stderr\n{err}\n", encoding="utf-8")
    ok = rc == 0
    status = (f"timed out (limit {timeout} s per command, BUDGET_S {BUDGET_S} s in all)"
              if rc is None else f"exit status {rc}")
    message = "" if ok else (
        f"{item.id}: {item.text}\nran (quick form, in a copy of the project): {shown}\n"
        f"{status} after {seconds:.1f} s; full log: {log}\n"
        f"--- stderr (last 40 lines)\n{_tail(err, 40)}\n"
        f"--- stdout (last 15 lines)\n{_tail(out, 15)}")
    RESULTS[item.id] = dict(result="passed" if ok else "failed", seconds=round(seconds, 1),
                            command=item.text, ran=shown, status=status, message=message,
                            log=str(log))
    return RESULTS[item.id]


def _run_shell(item, ws):
    env, argv, tool, timeout = quick_form(item)
    _ensure(_reads(item, argv), ws, item)
    shown = shlex.join([*(f"{k}={v}" for k, v in env.items()),
                        "python" if argv[0] == sys.executable else argv[0], *argv[1:]])
    rc, out, err, seconds = _execute(argv, ws, _env(env), timeout)
    return _record(item, ws, shown, rc, out, err, seconds, timeout)


def _python_payload(item):
    """This block and the document's earlier Python blocks (one shared namespace)."""
    blocks = []
    for it in ITEMS:
        if it.kind == "python" and it.doc == item.doc and it.block <= item.block \
                and not it.skip and not it.error:
            if it.given:
                blocks.append(dict(doc=f"{it.doc} (docs-test given)", line=1, source=it.given))
            blocks.append(dict(doc=it.doc, line=it.line, source=it.source))
    return blocks


def _run_python(item, ws):
    blocks = _python_payload(item)
    _ensure(_reads(item, "\n".join(b["source"] for b in blocks)), ws, item)
    payload = _log_dir(ws) / f"{_slug(item)}.json"
    payload.write_text(json.dumps(blocks), encoding="utf-8")
    argv = [sys.executable, str(ROOT / "tests" / "docs_exec.py"), str(payload)]
    shown = f"the Python blocks of {item.doc} up to line {item.line}, in one interpreter"
    rc, out, err, seconds = _execute(argv, ws, _env(), PYTHON_TIMEOUT_S)
    return _record(item, ws, shown, rc, out, err, seconds, PYTHON_TIMEOUT_S)


def _cuda_available():
    import torch
    return torch.cuda.is_available()


@pytest.fixture(scope="module", autouse=True)
def _summary(request, workspace):
    """After the module: each command's time and result in the terminal and summary.json."""
    yield
    rows = [dict(id=it.id, **RESULTS[it.id]) for it in ITEMS if it.id in RESULTS]
    (_log_dir(workspace) / "summary.json").write_text(json.dumps(rows, indent=1))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(f"docs commands (logs: {_log_dir(workspace)})")
        for r in rows:
            secs = f"{r['seconds']:6.1f} s" if "seconds" in r else " " * 8
            first = (r.get("command") or "").strip().splitlines()[:1]
            reporter.write_line(f"  {r['result']:8s} {secs}  {r['id']}: {''.join(first)[:90]}")


@pytest.mark.parametrize("item", ITEMS, ids=[it.id for it in ITEMS])
def test_documented_command(item, workspace):
    if item.error:
        RESULTS[item.id] = dict(result="failed", command=item.text, message=item.error)
        pytest.fail(f"{item.id}: {item.error}")
    reason = item.skip or (item.cuda if item.cuda and not _cuda_available() else None)
    if reason:
        RESULTS[item.id] = dict(result="skipped", command=item.text, reason=reason)
        pytest.skip(f"{item.id} ({item.text}): {reason} [docs-test marker]")
    done = RESULTS.get(item.id)  # already run as another command's dependency
    if done is None:
        try:
            done = (_run_shell if item.kind == "shell" else _run_python)(item, workspace)
        except _BudgetSpent as e:
            RESULTS[item.id] = dict(result="not run", command=item.text, message=str(e))
            pytest.fail(f"{item.id}: {e}", pytrace=False)
    if done["result"] != "passed":
        pytest.fail(done["message"], pytrace=False)


# Fenced blocks that are not commands (data, configs, listings) and need no marker.
NOT_RUN = {"", "json", "yaml", "yml", "toml", "text", "txt", "csv", "ini", "diff", "markdown", "md", "bibtex"}


def test_no_block_is_ignored_silently():
    """A block in a language the test neither runs nor knows as data (```zsh, ```Bash with an
    odd info string, ...) would be tested by nobody: name it here or run it above."""
    for path in DOCS:
        langs = {lang for lang, *_ in _blocks(path)}
        unknown = langs - SHELL_LANGS - PYTHON_LANGS - NOT_RUN
        assert not unknown, f"{path.relative_to(ROOT)}: fenced blocks in {sorted(unknown)}"
