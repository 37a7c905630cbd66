"""The human-verification round trip through a real Label Studio server (paper §3, A.6).

Label Studio runs from its own environment (``bash scripts/setup_label_studio_env.sh``
builds ``.venv-labelstudio``, or the folder ``VPMEL_LABEL_STUDIO_ENV`` names;
``scripts/test.sh`` builds it in the background and then runs this file). Where it is
missing, the server fixture builds it with that script first: the test never skips.
The server starts on a free localhost port with a temporary data folder, two annotators
and local-file serving of the test dataset's images; ``scripts/label_studio/studio.py``
(label-studio-sdk) creates the project from ``vpmel annotate export``'s files and posts the
two annotators' annotations (a box moved, boxes moved away, a pair marked unrelated, a type
changed, disagreements); the project is exported through the API, imported back with
``vpmel annotate import`` and the split stage applies it. The server stops at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from test_label_studio import (
    KAPPA_RELATED,
    KAPPA_TYPE,
    MEAN_IOU,
    PLAN,
    build_dataset,
    frames,
    result,
)
from test_label_studio import _run_split as run_split
from typer.testing import CliRunner

from vpmel.cli import app
from vpmel.vpwiki import label_studio as ls

REPO = Path(__file__).resolve().parents[1]
ENV_VAR = "VPMEL_LABEL_STUDIO_ENV"
ENV = Path(os.environ.get(ENV_VAR) or REPO / ".venv-labelstudio")
PYTHON = ENV / "bin" / "python"
STUDIO = REPO / "scripts" / "label_studio" / "studio.py"
USERS = {"a": ("a@vpmel.test", "annotator-a-pw", "vpmel-token-a"),
         "b": ("b@vpmel.test", "annotator-b-pw", "vpmel-token-b")}  # fmt: skip
START_TIMEOUT_S = 300  # first start migrates a new database: ~35 s on an idle 2-core machine


@dataclass
class Server:
    url: str
    root: Path  # LOCAL_FILES_DOCUMENT_ROOT: holds dataset/ and the project files
    paths: dict[str, Path]
    log: Path

    def studio(self, *args: str, user: str = "a") -> str:
        """Run studio.py in Label Studio's environment as ``user``; its stdout."""
        cmd = [str(PYTHON), str(STUDIO), args[0], "--url", self.url, "--token", USERS[user][2],
               *args[1:]]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr[-4000:]}"
        return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not PYTHON.is_file():  # build it with the project's script (~75 s), never skip
        build = ["bash", str(REPO / "scripts" / "setup_label_studio_env.sh"), str(ENV)]
        done = subprocess.run(build, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 or not PYTHON.is_file():
            pytest.fail(f"`{' '.join(build)}` failed:\n{(done.stdout + done.stderr)[-4000:]}")
    root = tmp_path_factory.mktemp("ls")
    paths = build_dataset(root)
    port, log = _free_port(), root / "server.log"
    users = [arg for u in USERS.values() for arg in ("--user", ":".join(u))]
    cmd = [str(PYTHON), str(STUDIO), "serve", "--data-dir", str(root / "server"),
           "--document-root", str(root), "--port", str(port), *users]  # fmt: skip
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not start at {url}:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield Server(url, root, paths, log)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server (its own process group: studio.py execs label-studio)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _plan_file(path: Path, tasks: dict[str, int], k: int) -> Path:
    path.write_text(json.dumps([
        {"task": tasks[mid], "result": result(*answers[k])} for mid, answers in PLAN.items()
    ]))  # fmt: skip
    return path


def test_round_trip_through_label_studio(server: Server) -> None:
    root, paths = server.root, server.paths
    mentions, ent, gro, kb = frames(paths)
    project_dir = root / "project"
    tasks = ls.export_tasks(mentions, ent, gro, kb, paths["dataset"], root)
    meta = ls.write_project(project_dir, tasks, root)

    made = json.loads(server.studio("create", str(project_dir)))
    assert sorted(made["tasks"]) == sorted(PLAN)  # one task per mention under review

    # the images are served from the dataset folder (local files, the project's storage)
    image = tasks[0]["data"][ls.IMAGE]
    token = {"Authorization": f"Token {USERS['b'][2]}"}
    request = urllib.request.Request(server.url + image, headers=token)
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.read() == (paths["dataset"] / "images/0.png").read_bytes()
    assert meta["local_storage_path"] == str((paths["dataset"] / "images").resolve())

    for k, user in enumerate(USERS):
        posted = json.loads(server.studio("annotate", str(_plan_file(
            root / f"plan_{user}.json", made["tasks"], k)), user=user))  # fmt: skip
        assert len(posted["annotations"]) == len(PLAN)

    export = root / "export.json"
    server.studio("export", str(export), "--project", str(made["project"]))
    exported = json.loads(export.read_text())
    assert len(exported) == len(PLAN)
    assert all(len({a["completed_by"] for a in t["annotations"]}) == 2 for t in exported)

    human = root / "human.json"
    got = CliRunner().invoke(app, ["annotate", "import", str(export), "--dataset",
                                   str(paths["dataset"]), "--out", str(human)])  # fmt: skip
    assert got.exit_code == 0, got.output
    payload = json.loads(human.read_text())
    assert payload["problems"] == []
    decided = {d["id"]: d for d in payload["decisions"]}
    assert {m: d["related"] for m, d in decided.items()} == {
        "m0": True, "m1": False, "m2": True, "m3": True, "m4": True, "m5": False, "m8": True,
        "m9": True,
    }  # fmt: skip
    assert decided["m0"]["box"] == pytest.approx([11, 8, 41, 36], abs=0.01)
    assert decided["m3"]["type"] == "Event" and decided["m9"]["type"] == "Country"
    a = payload["agreement"]
    assert a["kappa_related"] == pytest.approx(KAPPA_RELATED, abs=1e-4)
    assert a["kappa_type"] == pytest.approx(KAPPA_TYPE, abs=1e-4)
    assert a["mean_pairwise_iou"] == pytest.approx(MEAN_IOU, abs=1e-3)
    assert (a["annotators"], a["annotations"]) == (2, 2 * len(PLAN))

    reports = run_split(paths, root, str(human))
    table = pd.read_csv(reports / "vpwiki_human_decisions.csv").set_index("id")
    assert table["decision"].to_dict() == {
        "m0": "kept", "m1": "dropped_unrelated", "m2": "dropped_iou", "m3": "kept",
        "m4": "kept", "m5": "dropped_unrelated", "m8": "kept", "m9": "kept",
    }  # fmt: skip
    assert table.index[table["type_changed"]].tolist() == ["m3"]
    counts = json.loads((reports / "vpwiki_counts.json").read_text())
    assert {k: counts[f"human_{k}"] for k in ("kept", "dropped_unrelated", "dropped_iou",
                                              "type_changed")} == {
        "kept": 5, "dropped_unrelated": 2, "dropped_iou": 1, "type_changed": 1,
    }  # fmt: skip
    dropped = pd.read_csv(reports / "vpwiki_dropped.csv").set_index("id")["step"]
    assert dropped[["m1", "m5"]].eq("human_dropped_unrelated").all()
    assert dropped["m2"] == "iou_dropped"
