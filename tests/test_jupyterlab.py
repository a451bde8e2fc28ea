"""``make lab``: JupyterLab on the project, the venv's Python as kernel, in the bundle and in the hand-out.

Each test starts ``make lab`` headless on a free loopback port with a token, checks that the REST
API answers and serves the project's notebooks, runs the first code cell of a notebook through a
kernel over the kernel's websocket, and stops the server through its API.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest
import websocket

from inf265 import ROOT, release

VENV = Path(sys.prefix)
STARTUP = 120  # seconds for the server to answer (a loaded machine is slow to import JupyterLab)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A ``make lab`` server started in ``folder``; its REST API through :meth:`api`."""

    def __init__(self, folder: Path, tmp: Path):
        self.folder, self.port, self.token = folder, _free_port(), uuid.uuid4().hex
        args = (f"--no-browser --ip=127.0.0.1 --port={self.port} --ServerApp.port_retries=0 "
                f"--IdentityProvider.token={self.token}" + (" --allow-root" if os.geteuid() == 0 else ""))
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
               "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces")}
        self.log_path = tmp / "lab.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(["make", "--no-print-directory", "lab", f"VENV={VENV}", f"LAB_ARGS={args}"],
                                        cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def url(self, path: str, scheme="http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def api(self, path: str, method="GET", body=None):
        request = urllib.request.Request(self.url(path), method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            return response.status, (json.loads(text) if text.strip().startswith(("{", "[")) else text)

    def wait_ready(self) -> float:
        start = time.monotonic()
        while time.monotonic() - start < STARTUP:
            assert self.process.poll() is None, f"make lab exited ({self.process.returncode}):\n{self.output()}"
            try:
                if self.api("/api/status")[0] == 200:
                    return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        pytest.fail(f"JupyterLab did not answer within {STARTUP} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> int | None:
        """Shut the server down through its API; the process group we started is killed if it lingers."""
        if self.process.poll() is None:
            try:
                self.api("/api/shutdown", method="POST")
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
                self.log.close()
                return None
        self.log.close()
        return self.process.returncode


def _execute(ws, code: str, timeout: float = 120) -> dict:
    """Run ``code`` in the kernel behind ``ws``: {"reply": status, "stdout": text, "error": ename or None}."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
                   "version": "5.3", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    out = {"reply": None, "stdout": "", "error": None, "idle": False}
    deadline = time.monotonic() + timeout
    while not (out["reply"] and out["idle"]):
        assert time.monotonic() < deadline, f"no reply from the kernel within {timeout} s: {out}"
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "execute_reply":
            out["reply"] = content["status"]
        elif kind == "stream" and content["name"] == "stdout":
            out["stdout"] += content["text"]
        elif kind == "error":
            out["error"] = f"{content['ename']}: {content['evalue']}"
        elif kind == "status" and content["execution_state"] == "idle":
            out["idle"] = True
    return out


@pytest.fixture(scope="module")
def handout(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    release.build(out)
    return out / release.FOLDER


@pytest.mark.parametrize("where", ["bundle", "hand-out"])
def test_make_lab_serves_the_project_and_runs_a_notebook_cell_with_the_venv(where, handout, tmp_path):
    folder = ROOT if where == "bundle" else handout
    lab = Lab(folder, tmp_path)
    try:
        lab.wait_ready()
        assert lab.api("/lab")[0] == 200
        status, specs = lab.api("/api/kernelspecs")
        assert specs["default"] == "python3" and "python3" in specs["kernelspecs"]
        if where == "hand-out":  # JupyterLab opens them unmodified: their kernelspec is the one it would write
            shown = specs["kernelspecs"]["python3"]["spec"]["display_name"]
            for name in release.NOTEBOOKS:
                spec = nbformat.read(folder / name, as_version=4).metadata.kernelspec
                assert (spec.name, spec.display_name, spec.language) == ("python3", shown, "python"), (name, spec)
        status, content = lab.api("/api/contents/backpropagation.ipynb?content=0")
        assert status == 200 and content["type"] == "notebook"  # the server's root is the project
        status, session = lab.api("/api/sessions", "POST", {"path": "backpropagation.ipynb", "type": "notebook",
                                                            "name": "backpropagation.ipynb",
                                                            "kernel": {"name": "python3"}})
        assert status == 201
        ws = websocket.create_connection(
            lab.url(f"/api/kernels/{session['kernel']['id']}/channels?token={lab.token}", "ws"), timeout=120)
        try:
            nb = nbformat.read(folder / "backpropagation.ipynb", as_version=4)
            first = next(c.source for c in nb.cells if c.cell_type == "code")
            ran = _execute(ws, first)
            assert ran["reply"] == "ok" and ran["error"] is None, ran
            facts = _execute(ws, "import os, sys\nprint(sys.prefix, os.getcwd(), os.environ.get('DATA_DIR'), "
                                 "torch.get_default_dtype(), sep='\\n')")
        finally:
            ws.close()
        prefix, cwd, data_dir, dtype = facts["stdout"].split("\n")[:4]
        assert Path(prefix).resolve() == VENV.resolve()            # the venv's Python is the kernel
        assert Path(cwd).resolve() == folder.resolve()             # notebooks run in the project folder
        # DATA_DIR reaches the notebooks (the bundle's make sets data/ by default; the hand-out's passes it on)
        assert data_dir == os.environ.get("DATA_DIR", "data" if where == "bundle" else "None")
        assert dtype == "torch.float64"                            # the notebook's first cell did run
        assert lab.api(f"/api/sessions/{session['id']}", "DELETE")[0] == 204
    finally:
        code = lab.stop()
    assert code == 0, f"make lab did not stop cleanly ({code}):\n{lab.output()}"
