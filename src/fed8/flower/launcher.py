"""A local federation on 127.0.0.1: one SuperLink and N SuperNodes as child processes, and a fed8 run on it.

``fed8 federation`` is :func:`run_federation`. Every process starts in its own process
group (its ClientApp / ServerApp children with it) and is stopped by group, TERM then KILL,
on success, error, Ctrl-C, ``SIGTERM`` and ``SIGHUP`` (:mod:`fed8._process`). A fed8 killed
outright (``SIGKILL``, the OOM killer) cannot stop them, and its orphaned federation would
go on running the ServerApp into the same run directory: the next federation with the same
``FLWR_HOME`` stops such leftovers before it starts anything, once it holds ``RUN_DIR/flwr/.lock``
(so never those of a live fed8). ``FLWR_HOME`` (connections, installed apps, logs) lives in
``RUN_DIR/flwr``. The Flower app handed to ``flwr run`` is a ``pyproject.toml`` whose
components point at the installed ``fed8.flower`` modules; the SuperLink runs with
``--disable-runtime-dependency-installation`` and the app declares no dependencies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .._io import exclusive
from .._process import set_process_env
from ..errors import CheckpointError, Fed8Error
from ..rundir import RunDir

__all__ = ["STAGE_FILE", "app_pyproject", "flower_env", "local_federation", "run_federation", "stop_leftovers",
           "write_app"]

#: ``RUN_DIR/flwr/<this>``: the ServerApp's current step after the rounds, in a few words (the report, the quantize
#: stage's steps), written by the ServerApp and shown on ``fed8 federation``'s progress line.
STAGE_FILE = "stage"

log = logging.getLogger("fed8")


def app_pyproject(name: str, description: str, serverapp: str, clientapp: str, config: tuple[str, ...]) -> str:
    """The ``pyproject.toml`` of a Flower app whose components are installed modules (no dependencies to install)."""
    keys = "".join(f'{k} = ""\n' for k in config)
    return f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "{description}"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fed8"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
{keys}"""


_APP = app_pyproject("fed8app", "fed8 on Flower: the ServerApp and ClientApp of the installed fed8 package",
                     "fed8.flower.server_app:app", "fed8.flower.client_app:app", ("run-dir",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Fed8Error(f"the SuperLink exited with code {proc.returncode}; see {log}.")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise Fed8Error(f"the SuperLink did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s; see {log}.")


def _children() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` of every process now (Linux ``/proc``)."""
    tree: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(d.name))
    return tree


def _marked(home: Path | None) -> set[int]:
    """Live processes started with our ``FLWR_HOME`` (orphans whose parent is already gone)."""
    if home is None:
        return set()
    needle, out = f"FLWR_HOME={home}".encode(), set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    out.add(int(d.name))
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(procs: list[subprocess.Popen], home: Path | None = None) -> None:
    """TERM, then KILL, every process we started and every process they started.

    Flower's SuperLink and SuperNodes start their SuperExec in a session of its own, which
    starts the ServerApp / ClientApp processes, so process groups alone do not reach them:
    the descendants are collected from ``/proc`` first, while the tree is intact, plus any
    process that carries this federation's ``FLWR_HOME`` (an orphan of an earlier crash).
    """
    tree, todo, pids = _children(), [p.pid for p in procs], set()
    while todo:
        pid = todo.pop()
        if pid not in pids:
            pids.add(pid)
            todo.extend(tree.get(pid, []))
    pids |= _marked(home)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (any(p.poll() is None for p in procs) or any(map(_alive, pids))):
            time.sleep(0.1)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def stop_leftovers(home: Path) -> int:
    """Stop the processes a fed8 killed outright left running with ``FLWR_HOME = home``; how many there were.

    Its SuperLink, SuperNodes and ServerApp would otherwise go on with the run in the same run
    directory, beside the federation about to start there.
    """
    stale = _marked(home)
    if stale:
        log.warning("stopping %d Flower processes left running under %s by an earlier fed8 that was killed",
                    len(stale), home)
        _stop([], home)
    return len(stale)


SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.25"


def flower_env(home: Path) -> dict[str, str]:
    """The environment of every Flower process: ``FLWR_HOME`` here, telemetry and update checks off.

    The processes also get fed8's OpenMP wait policy and malloc thresholds (:mod:`fed8._process`)
    unless the user set them: a SuperNode's ClientApp trains with torch next to the other nodes.
    Their SuperExecs look for new tasks every 0.25 s instead of Flower's 1 s
    (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, unless set): each message a node gets starts a
    ClientApp process, so the poll is paid once per message per node.
    """
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env.setdefault(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S)
    set_process_env(env)
    return env


def _register(public_key: Path, env: dict, log: Path) -> None:
    """``flwr supernode register PUBLIC_KEY fed8``: admit one SuperNode to a SuperLink with authentication."""
    with open(log, "ab") as fh:
        r = subprocess.run([_bin("flwr"), "supernode", "register", str(public_key), "fed8"], env=env, stdout=fh,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120, check=False)
    if r.returncode != 0:
        raise Fed8Error(f"flwr supernode register {public_key} failed (exit {r.returncode}); see {log}.")


@contextlib.contextmanager
def local_federation(home: Path, nodes: int, *, timeout_s: float = 60.0, node_dir: Path | None = None,
                     tls: bool = False, auth: bool = False, unregistered: tuple[int, ...] = (),
                     models: tuple[str, ...] = ()) -> Iterator[dict]:
    """Start a SuperLink and ``nodes`` SuperNodes (partition ids 0..nodes-1); yield ``{"port", "env", "pids"}``.

    Node ``i`` keeps its files (downlink references, error-feedback residuals) under
    ``node_dir / i`` (default ``home / "nodes" / i``). ``tls``: a fresh CA and server
    certificate for 127.0.0.1 (``fed8 certs``) in ``home / "certs"``; the SuperLink serves
    TLS and every SuperNode and the ``flwr`` CLI verify it. ``auth`` (implies ``tls``): the
    SuperLink admits only SuperNodes whose public key was registered
    (``--enable-supernode-auth``, ``flwr supernode register``); each node signs with its
    own key. ``unregistered``: partitions whose key is not registered (tests: they are refused).
    ``models``: custom models (import paths) the nodes may import (their node config's ``models``);
    the current folder is then on the nodes' ``PYTHONPATH``, as it is for ``fed8 run``.
    """
    from ..certs import make_certificates, make_node_keys

    home.mkdir(parents=True, exist_ok=True)
    node_dir = (node_dir or home / "nodes").resolve()
    env = flower_env(home)
    if models:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
    allowed = f' models="{" ".join(models)}"' if models else ""
    procs: list[subprocess.Popen] = []
    tls = tls or auth
    certs = home / "certs"
    if tls:
        paths = make_certificates(certs, ["127.0.0.1", "localhost"], days=7, force=True)
        link_security = ["--ssl-ca-certfile", str(paths["ca.crt"]), "--ssl-certfile", str(paths["server.crt"]),
                         "--ssl-keyfile", str(paths["server.key"])]
        node_security = ["--root-certificates", str(paths["ca.crt"])]
        connection = f'root-certificates = "{paths["ca.crt"]}"\n'
    else:
        link_security, node_security, connection = ["--insecure"], ["--insecure"], "insecure = true\n"
    keys = make_node_keys(certs, nodes, force=True) if auth else []

    def start(args: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as fh:
            p = subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        procs.append(p)
        return p

    try:
        port = _free_port()
        link = start([_bin("flower-superlink"), *link_security, "--host", "127.0.0.1", "--port", str(port),
                      "--disable-runtime-dependency-installation", *(["--enable-supernode-auth"] if auth else [])],
                     home / "superlink.log")
        _wait_port(port, link, home / "superlink.log", timeout_s)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "fed8"\n\n[superlink.fed8]\naddress = "127.0.0.1:{port}"\n{connection}')
        for i, (_, pub) in enumerate(keys):
            if i not in unregistered:
                _register(pub, env, home / "register.log")
        for i in range(nodes):
            start([_bin("flower-supernode"), *node_security, "--superlink", f"127.0.0.1:{port}",
                   *(["--auth-supernode-private-key", str(keys[i][0])] if auth else []),
                   "--port", str(_free_port()), "--node-config",
                   f'partition-id={i} num-partitions={nodes} state-dir="{node_dir / str(i)}"{allowed}'],
                  home / f"supernode-{i}.log")
        yield {"port": port, "env": env, "pids": [p.pid for p in procs], "procs": procs}
    finally:
        _stop(procs, home)


def write_app(run_dir: str | Path) -> Path:
    """The Flower app folder for ``flwr run`` (``RUN_DIR/flwr/app``): fed8's installed apps, no dependencies."""
    app = Path(run_dir).resolve() / "flwr" / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(_APP)
    return app


def run_federation(run_dir: str | Path, nodes: int, *, progress: Callable[[dict], None] | None = None,
                   stage: Callable[[str], None] | None = None, timeout_s: float | None = None, tls: bool = False,
                   auth: bool = False) -> None:
    """Run (or continue) the fed8 run in ``run_dir`` on a local federation of ``nodes`` SuperNodes.

    ``progress`` gets each metrics row as its round commits; ``stage`` the ServerApp's steps after the
    rounds (the report, the quantize stage's steps), both from files the ServerApp writes, polled twice a second.
    """
    from . import require_flwr

    require_flwr()
    run_dir = Path(run_dir).resolve()
    home = run_dir / "flwr"
    app = write_app(run_dir)
    metrics = run_dir / "metrics.jsonl"
    seen = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    stage_file = home / STAGE_FILE
    stage_file.unlink(missing_ok=True)  # an earlier attempt's last step
    shown = ""
    stop = threading.Event()

    def follow() -> None:
        nonlocal seen, shown
        while not stop.wait(0.5):
            if progress is not None and metrics.exists():
                lines = metrics.read_text().splitlines()
                for line in lines[seen:]:
                    with contextlib.suppress(json.JSONDecodeError):
                        progress(json.loads(line))
                seen = len(lines)
            if stage is not None:
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    words = stage_file.read_text().strip()
                    if words and words != shown:
                        shown = words
                        stage(words)

    def busy(holder: str) -> CheckpointError:
        return CheckpointError(f"{run_dir} is in use by {holder}, which runs its federation now; wait for it to "
                               f"finish or stop it (Ctrl-C), then continue with: fed8 federation --resume {run_dir}")

    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive(home / ".lock", f"fed8 federation (pid {os.getpid()})", busy))
        stop_leftovers(home)  # no live fed8 federation owns them now: a killed one's, still running the ServerApp
        RunDir(run_dir).ensure_unlocked()  # e.g. a 'fed8 run --resume' of the same folder, training now
        from ..models.custom import is_import_path

        model = RunDir(run_dir).load_config().model.name  # your own config: its custom model may be imported
        fed = stack.enter_context(local_federation(home, nodes, node_dir=run_dir / "nodes", tls=tls, auth=auth,
                                                   models=(model,) if is_import_path(model) else ()))
        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        cmd = [_bin("flwr"), "run", str(app), "fed8", "--stream", "--run-config",
               f"run-dir='{run_dir}'"]
        with open(home / "flwr-run.log", "ab") as fh:
            p = subprocess.Popen(cmd, env=fed["env"], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
            try:
                p.wait(timeout=timeout_s)
            finally:
                _stop([p])
                stop.set()
                watcher.join(5)
    if not (run_dir / "summary.json").exists() or json.loads((run_dir / "summary.json").read_text()).get(
            "rounds", 0) < _planned_rounds(run_dir):
        raise Fed8Error(f"the Flower run did not finish; see {home / 'flwr-run.log'} and the logs in {home}. "
                        f"Continue it with: fed8 federation --resume {run_dir} --nodes {nodes}")


def _planned_rounds(run_dir: Path) -> int:
    from ..rundir import RunDir

    return RunDir(run_dir).load_config().train.rounds
