"""The guides' examples run as written. Every shell (```sh) and Python (```python) block of
README.md, docs/*.md, serving/README.md, export/README.md and benchmarks/README.md runs in a
sandbox that looks like a checkout after a first training run (photos, cat.jpg, dog.jpg, a
published version and a candidate, all made here, small), with only these substitutions:
training runs one head and one fine-tuning epoch on random weights at 32 px (`--image_size=150`
and the Python example's 150 read 32, so prepared folders and pixels match) on 8 training and 4
validation photos a class (2 select, 2 evaluate), servers and the tf.data service listen on
free ports, and the README's `/path/to/...` placeholders name the sandbox's files. The sandbox
is made once per test session; each block gets a copy of it made of hard links. A block that
cannot run here says why in a visible `<!-- not run: ... -->` comment just above it. Commands
must not hide in indented blocks, which this test does not read."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_ports, write_split

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
        "serving/README.md", "export/README.md", "benchmarks/README.md")
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->")
COMMAND = re.compile(r"^(python|pip|curl|docker|kubectl|TF_CONFIG|tensorboard|ruff|apt-get)\b")
# What a training or data command gets appended, so that it runs in seconds on the sandbox
# (later flags override a flagfile's and the command line's own).
SMALL = {
    "catdog.train": ["--weights=none", "--epochs=1", "--fine_tune_epochs=1", "--image_size=32"],
}
# A command whose documented outcomes include a status other than 0: the gate's "held back"
# (3) is an answer, not a failure, for a training run or a publish of a random-weights model.
OUTCOMES = {"catdog.train": {0, 3}, "catdog.publish --candidate": {0, 3}}


@dataclasses.dataclass(frozen=True)
class Block:
    doc: str
    line: int
    language: str
    text: str
    not_run: str | None  # why, when the Markdown says it cannot run here

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def fenced_blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```") and lines[i][3:].strip():
            end = lines.index("```", i + 1)
            before = [line for line in lines[:i] if line.strip()]
            reason = NOT_RUN.search(before[-1]) if before else None
            found.append(Block(doc, i + 1, lines[i][3:].strip(), "\n".join(lines[i + 1:end]),
                               reason.group(1) if reason else None))
            i = end
        i += 1
    return found


BLOCKS = [block for doc in DOCS for block in fenced_blocks(doc)
          if block.language in ("sh", "python")]
RUNNABLE = [block for block in BLOCKS if not block.not_run]


def test_commands_are_in_fenced_blocks_that_this_test_reads():
    for doc in DOCS:
        lines = (ROOT / doc).read_text().splitlines()
        in_fence = False
        for number, (before, line) in enumerate(zip(["", *lines], lines), 1):
            if line.startswith("```"):
                in_fence = not in_fence
            elif not in_fence and line.startswith("    ") and not before.strip() \
                    and COMMAND.match(line.strip()):  # an indented block's first line
                pytest.fail(f"{doc}:{number}: a command in an indented block: {line.strip()}")


def test_each_block_runs_or_says_why_not():
    assert len(RUNNABLE) >= 15, [str(b) for b in RUNNABLE]
    for block in BLOCKS:
        assert block.not_run is None or len(block.not_run) > 10, block


# --- the sandbox ---------------------------------------------------------------------------

WRAPPER = """#!{python}
# `python` in the README's blocks: the test's interpreter, with small runs and free ports.
import json, os, sys
args = sys.argv[1:]
extra = json.loads(os.environ["CATDOG_README_EXTRA"])
asks = {{"--help", "--version"}} & set(args)
if len(args) >= 2 and args[0] == "-m" and args[1] in extra and not asks:
    args += extra[args[1]]
os.execv({python!r}, [{python!r}, *args])
"""


def _run(command: str, cwd: Path, env: dict[str, str], timeout: int = 900
         ) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The sandbox every block starts from, made once per test session (pytest-xdist's workers
    share one, made by whichever comes first, under a lock)."""
    base = tmp_path_factory.getbasetemp()
    session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = session / "readme-checkout"
    with open(session / "readme-checkout.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".made").exists():
            shutil.rmtree(root, ignore_errors=True)
            _make_template(root)
            (root / ".made").touch()
    return root


def _make_template(root: Path) -> None:
    """A folder like a checkout after a few training runs: configs/, serving/, photos,
    published versions 1 and 2 (export/catdog/<N>, export/catdog.h5) and a candidate
    (export/candidates/catdog/3 and its .h5), all three the same model: one training run
    publishes version 1, and version 2 and the candidate are copies of it (three runs with the
    same seed and photos made the same model, at three times the cost)."""
    root.mkdir(parents=True)
    for folder in ("configs", "serving", "deploy"):
        shutil.copytree(ROOT / folder, root / folder)
    data = root / "data" / "cats_and_dogs_filtered"
    write_split(data / "train", 8, seed=1)
    write_split(data / "validation", 4, seed=2)
    shutil.copy(data / "validation" / "cats" / "cats.0.jpg", root / "cat.jpg")
    shutil.copy(data / "validation" / "dogs" / "dogs.0.jpg", root / "dog.jpg")
    write_split(root / "photos", 1, seed=3)
    for path in (root / "photos").rglob("*.jpg"):
        path.rename(root / "photos" / path.name)
    env = _environment(root, free_ports(4))
    result = _run("python -m catdog.train --data_dir=data/cats_and_dogs_filtered --flip=none "
                  "--zoom=0 --cache_features --run_dir=runs/first", root, env)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(root / "runs")
    base, candidates = root / "export" / "catdog", root / "export" / "candidates" / "catdog"
    shutil.copytree(base / "1", base / "2")
    shutil.copytree(base / "1", candidates / "3", ignore=shutil.ignore_patterns("gate.json"))
    shutil.copy2(root / "export" / "catdog.h5", candidates / "3.h5")


def _link_or_copy(source: str, target: str) -> None:
    """A sandbox's files are hard links to the template's, but not its lock files: an OS lock
    is held on the inode, and the sandboxes of two tests running at once must not share one."""
    if source.endswith(".lock"):
        shutil.copy2(source, target)
    else:
        os.link(source, target)


def _environment(sandbox: Path, ports: list[int]) -> dict[str, str]:
    bin_dir = sandbox / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "python"
    wrapper.unlink(missing_ok=True)  # a sandbox's files are hard links to the template's
    wrapper.write_text(WRAPPER.format(python=sys.executable))
    wrapper.chmod(0o755)
    grpc, rest = ports[:2]
    extra = {**SMALL, "catdog.serve": [f"--port={grpc}", f"--rest_api_port={rest}"]}
    (sandbox / ".curlrc").unlink(missing_ok=True)
    (sandbox / ".curlrc").write_text("fail-with-body\nsilent\nshow-error\n")  # HTTP errors fail
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CURL_HOME": str(sandbox),
            "TF_CPP_MIN_LOG_LEVEL": "2", "CATDOG_README_EXTRA": json.dumps(extra)}


def _substituted(text: str, sandbox: Path, ports: list[int]) -> str:
    candidate = next(p for p in (sandbox / "export" / "candidates" / "catdog").iterdir()
                     if p.is_dir() and p.name.isdigit())
    grpc, rest, dispatcher, worker = ports
    for old, new in {
        "8500": str(grpc), "8501": str(rest), "host:5050": f"localhost:{dispatcher}",
        "5050": str(dispatcher), "5051": str(worker),
        "candidates/catdog/3": f"candidates/catdog/{candidate.name}",
        "/path/to/cats_and_dogs_filtered": "data/cats_and_dogs_filtered",
        "--image_size=150": "--image_size=32",
        '"cat.jpg"), 150)': '"cat.jpg"), 32)',
    }.items():
        text = text.replace(old, new)
    return text


def _commands(shell: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", shell)
    return [line for line in joined.splitlines() if line.strip() and not
            line.lstrip().startswith("#")]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Background:
    """The block's long-running commands (servers, tf.data service processes); a new serve
    command replaces the running server, as a reader would stop one before starting the
    next."""

    def __init__(self, sandbox: Path, env: dict[str, str]):
        self.sandbox, self.env, self.processes = sandbox, env, {}

    def start(self, command: str, port: int, kind: str) -> None:
        self.stop(kind)
        process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.sandbox,
                                   env=self.env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.processes[kind] = process
        deadline = time.monotonic() + 180
        while not _listening(port):
            assert process.poll() is None, f"{command}: {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"{command}: not listening on {port}"
            time.sleep(0.2)

    def stop(self, kind: str | None = None) -> str:
        """Stops the named process (or all); what the last one stopped wrote to stderr."""
        written = ""
        for name in [kind] if kind else list(self.processes):
            process = self.processes.pop(name, None)
            if process is not None:
                process.terminate()
                written = process.communicate(timeout=60)[1]
        return written


def _published_run(command: str, sandbox: Path) -> str | None:
    """The run folder a training command with a flagfile publishes from (its --run_dir)."""
    flagfile = re.search(r"--flagfile=(\S+)", command)
    if "catdog.train" not in command or not flagfile:
        return None
    found = re.findall(r"^--run_dir=(\S+)", (sandbox / flagfile.group(1)).read_text(), re.M)
    return str(sandbox / found[-1]) if found else None


def _kind(command: str) -> str | None:
    if "catdog.serve" in command and "--version" not in command:
        return "serve"
    match = re.search(r"catdog\.data_service (dispatcher|worker)", command)
    return match.group(1) if match else None


def _needs_a_server(text: str) -> bool:
    return bool(re.search(r"localhost:85\d\d", text)) and "catdog.serve" not in text


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_a_readme_block_runs_as_written(block, template, tmp_path):
    sandbox = tmp_path / "checkout"
    shutil.copytree(template, sandbox, copy_function=_link_or_copy, symlinks=True)
    ports = free_ports(4)
    env = _environment(sandbox, ports)
    background = Background(sandbox, env)
    try:
        if _needs_a_server(block.text):  # the server the block's text says is running
            background.start("python -m catdog.serve --model_config_file="
                             "serving/models.local.config "
                             "--allow_version_labels_for_unavailable_models "
                             "--monitoring_config_file=serving/monitoring.config",
                             ports[1], "serve")
        text = _substituted(block.text, sandbox, ports)
        if block.language == "python":
            result = _run(f"python - <<'EOF'\n{text}\nEOF", sandbox, env)
            assert result.returncode == 0, f"{block}: {result.stderr[-3000:]}"
            return
        published = None  # the run a training command of this block just published
        for command in _commands(text):
            kind = _kind(command)
            if kind:
                port = ports[1] if kind == "serve" else ports[2 if kind == "dispatcher" else 3]
                background.start(command, port, kind)
                if kind == "serve" and published:  # it serves what that run published
                    assert f"trained by {published}, epoch" in background.stop("serve"), block
                continue
            result = _run(command, sandbox, env)
            if result.returncode == 0:
                published = _published_run(command, sandbox) or published
            allowed = next((codes for key, codes in OUTCOMES.items() if key in command), {0})
            assert result.returncode in allowed, (
                f"{block}: `{command}` exited {result.returncode}:\n{result.stderr[-3000:]}")
            assert "Traceback" not in result.stderr, f"{block}: `{command}`: {result.stderr}"
    finally:
        background.stop()
