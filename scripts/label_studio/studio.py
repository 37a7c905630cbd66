"""Drive Label Studio for VPWiki's human verification (paper §3, Appendix A.6).

Runs in Label Studio's own environment (``bash scripts/setup_label_studio_env.sh`` builds
``.venv-labelstudio``) and talks to the server through ``label-studio-sdk``; vpmel itself
only writes and reads the JSON (``vpmel annotate export`` / ``vpmel annotate import``).

    PY=.venv-labelstudio/bin/python
    $PY scripts/label_studio/studio.py serve --user me@lab.org:PASSWORD:TOKEN   # the server
    $PY scripts/label_studio/studio.py create data/label_studio --token TOKEN   # the project
    $PY scripts/label_studio/studio.py export data/label_studio/export.json --token TOKEN
    $PY scripts/label_studio/studio.py annotate PLAN.json --token TOKEN         # tests: post
                                                                                # annotations

``serve`` creates the users (``label-studio init``; the first one owns the organisation and
turns on legacy API tokens so TOKEN works as given), enables local-file serving from the
dataset folder and starts the server on 127.0.0.1 in the foreground. ``create`` makes the
project from ``vpmel annotate export``'s folder: labeling config, a local-files storage over
the images (Label Studio serves ``/data/local-files/?d=`` only below one) and the tasks with
their predictions; it prints ``{"project": ID, "tasks": {mention id: task id}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


def server_env(data_dir: Path, document_root: Path) -> dict[str, str]:
    """Label Studio's settings: its data folder, local files, nothing sent anywhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("USERNAME", "PASSWORD")}
    env |= {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir.resolve()),
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(document_root.resolve()),
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    return env


def label_studio_bin() -> str:
    return str(Path(sys.executable).with_name("label-studio"))


def serve(args: argparse.Namespace) -> None:
    env = server_env(args.data_dir, args.document_root)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    for n, user in enumerate(args.user or []):
        email, password, token = user.split(":", 2)
        cmd = [label_studio_bin(), "init", "--quiet", "--username", email, "--password",
               password, "--user-token", token]  # fmt: skip
        if n == 0:
            cmd.append("--enable-legacy-api-token")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"studio serve: creating user {email} failed:\n{done.stdout}{done.stderr}")
        print(f"studio serve: user {email} ready", flush=True)
    cmd = [label_studio_bin(), "start", "--no-browser", "--internal-host", args.host,
           "--port", str(args.port)]  # fmt: skip
    print(f"studio serve: http://{args.host}:{args.port} (data {args.data_dir})", flush=True)
    os.execve(cmd[0], cmd, env)


def client(args: argparse.Namespace) -> Any:
    from label_studio_sdk import LabelStudio

    token = args.token or os.environ.get("LABEL_STUDIO_API_KEY")
    if not token:
        sys.exit("studio: give --token or set LABEL_STUDIO_API_KEY")
    return LabelStudio(base_url=args.url, api_key=token)


def create(args: argparse.Namespace) -> None:
    ls, folder = client(args), args.project_dir
    meta = json.loads((folder / "project.json").read_text())
    tasks = json.loads((folder / "tasks.json").read_text())
    project = ls.projects.create(
        title=args.title or meta["title"],
        label_config=(folder / "labeling_config.xml").read_text(),
        model_version="vpmel-auto",
        show_collab_predictions=True,
    )
    ls.import_storage.local.create(
        project=project.id, path=meta["local_storage_path"], title="dataset images",
        use_blob_urls=False,
    )  # fmt: skip
    ls.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True)
    ids = {t.data["mention_id"]: t.id for t in ls.tasks.list(project=project.id)}
    print(json.dumps({"project": project.id, "tasks": ids}))


def annotate(args: argparse.Namespace) -> None:
    """Post annotations as the token's user: PLAN is a list of {task, result[, was_cancelled]}."""
    ls = client(args)
    made = []
    for item in json.loads(args.plan.read_text()):
        ann = ls.annotations.create(
            id=item["task"],
            result=item["result"],
            was_cancelled=bool(item.get("was_cancelled", False)),
        )
        made.append(ann.id)
    print(json.dumps({"annotations": made}))


def export(args: argparse.Namespace) -> None:
    ls = client(args)
    project = args.project or _only_project(ls)
    chunks = ls.projects.exports.download_sync(project, export_type="JSON", download_all_tasks=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(b"".join(chunks))
    print(f"studio export: project {project} → {args.out}")


def _only_project(ls: Any) -> int:
    projects = list(ls.projects.list())
    if len(projects) != 1:
        sys.exit(f"studio export: {len(projects)} projects on the server; give --project ID")
    return projects[0].id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="create users and start the server (foreground)")
    s.add_argument("--data-dir", type=Path, default=Path("data/label_studio/server"))
    s.add_argument("--document-root", type=Path, default=Path("data/dataset"))
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--user", action="append", help="EMAIL:PASSWORD:TOKEN (repeatable)")
    s.set_defaults(run=serve)
    for name, run, helptext in (("create", create, "make the project from the export folder"),
                                ("annotate", annotate, "post annotations (tests)"),
                                ("export", export, "download the JSON export")):  # fmt: skip
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--url", default=DEFAULT_URL)
        p.add_argument("--token", help="API token (or LABEL_STUDIO_API_KEY)")
        p.set_defaults(run=run)
        if name == "create":
            p.add_argument("project_dir", type=Path, nargs="?", default=Path("data/label_studio"))
            p.add_argument("--title")
        elif name == "annotate":
            p.add_argument("plan", type=Path)
        else:
            p.add_argument(
                "out", type=Path, nargs="?", default=Path("data/label_studio/export.json")
            )
            p.add_argument("--project", type=int)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
