"""Hostile submissions for the grader's tests, built from the reference notebooks.

Every submission has the same wrong code (a hand-written ``backpropagation`` whose weight
gradients are 3 times too large, and a ``train_manual_update`` that does nothing) on top of the
reference notebooks' definitions; each attack adds one trick, both inside the graded functions
(it runs in the grader's runner, during the checks) and as a top-level cell (it runs in the
notebook kernel). The grader must give every attack at most the score of the plain wrong
submission, leave the canary folder unread and unchanged, let no request reach the network, and
leave no process behind.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import nbformat

from inf265 import ROOT
from inf265.nbdefs import _kept_statements

WRONG_BACKPROP = '''
def backpropagation(model, y_true, y_pred):
    TRICK
    with torch.no_grad():
        L = model.L
        delta = -2 * (y_true - y_pred) * model.df[L](model.z[L])
        for l in range(L, 0, -1):
            model.dL_dw[l] = 3 * (delta.T @ model.a[l - 1])
            model.dL_db[l] = delta.sum(0)
            if l > 1:
                delta = (delta @ model.fc[str(l)].weight) * model.df[l - 1](model.z[l - 1])
'''

# the autograd attack: right gradients, taken from a revived autograd engine
AUTOGRAD_BACKPROP = '''
def backpropagation(model, y_true, y_pred):
    TRICK
    from torch.autograd.variable import Variable
    engine = Variable._execution_engine
    Variable._execution_engine = getattr(engine, "_engine", engine)
    try:
        Variable._execution_engine = torch._C._ImperativeEngine()
    except Exception:
        pass
    with torch.enable_grad():
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        out = model.a[0].detach()
        for l in range(1, model.L + 1):
            out = model.f[l](torch.nn.functional.linear(out, model.fc[str(l)].weight, model.fc[str(l)].bias))
        grads = torch.autograd.grad(((out - y_true) ** 2).sum(), params)
    for l in range(1, model.L + 1):
        model.dL_dw[l], model.dL_db[l] = grads[2 * l - 2].detach(), grads[2 * l - 1].detach()
'''

# autograd reached through names the grader must resolve: getattr with built strings, vars(), importlib
GETATTR_BACKPROP = '''
def backpropagation(model, y_true, y_pred):
    TRICK
    import importlib
    engine_module = importlib.import_module("torch." + "auto" + "grad")
    grad = getattr(engine_module, "".join(["g", "r", "a", "d"]))
    with torch.enable_grad():
        params = list(model.parameters())
        for p in params:
            setattr(p, "requires_" + "grad", True)
        out = model.a[0].detach()
        for l in range(1, model.L + 1):
            out = model.f[l](torch.nn.functional.linear(out, model.fc[str(l)].weight, model.fc[str(l)].bias))
        loss = ((out - y_true) ** 2).sum()
        grads = grad(loss, params)
    for l in range(1, model.L + 1):
        model.dL_dw[l], model.dL_db[l] = grads[2 * l - 2].detach(), grads[2 * l - 1].detach()
'''

# the course's Lab 4 style: layer objects with a hand-written backward() (not autograd); a correct solution
LAB4_BACKPROP = '''
class LinearBackward:
    """The backward step of one linear layer, written by hand (equations (5)-(7))."""

    def __init__(self, layer):
        self.layer = layer

    def backward(self, delta, a_prev):
        return delta @ self.layer.weight, delta.T @ a_prev, delta.sum(0)


class ActivationBackward:
    def __init__(self, derivative):
        self.derivative = derivative

    def backward(self, upstream, z):
        return upstream * self.derivative(z)


def backpropagation(model, y_true, y_pred):
    with torch.no_grad():
        L = model.L
        layers = {l: LinearBackward(model.fc[str(l)]) for l in range(1, L + 1)}
        delta = ActivationBackward(model.df[L]).backward(-2 * (y_true - y_pred), model.z[L])
        for l in range(L, 0, -1):
            upstream, model.dL_dw[l], model.dL_db[l] = layers[l].backward(delta, model.a[l - 1])
            if l > 1:
                delta = ActivationBackward(model.df[l - 1]).backward(upstream, model.z[l - 1])
'''

# right updates, made by torch.optim: the manual checks must not credit them
OPTIMIZER_MANUAL = '''
def train_manual_update(n_epochs, lr, model, loss_fn, train_loader, weight_decay=0, momentum=0):
    TRICK
    from torch import optim
    optimizer = getattr(optim, "S" + "GD")(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    for epoch in range(n_epochs):
        total = 0.0
        for imgs, labels in train_loader:
            loss = loss_fn(model(imgs.double()), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / len(train_loader))
    return losses
'''

WRONG_MANUAL = '''
def train_manual_update(n_epochs, lr, model, loss_fn, train_loader, weight_decay=0, momentum=0):
    TRICK
    return [0.0] * n_epochs
'''


def attacks(canary: Path, port: int, marker: str, host_socket: Path | None = None) -> dict[str, str]:
    """name -> the trick's code (run in the graded functions and as a notebook cell)."""
    c = str(canary)
    return {
        "plain": "pass",
        "files": f'''
            import os, shutil, socket, sqlite3, ctypes, _posixsubprocess
            c = {c!r}
            routes = {{
                "read": lambda: print("stolen:", open(c + "/secret.txt").read()),
                "write": lambda: open(c + "/written.txt", "w").write("x"),
                "remove": lambda: os.remove(c + "/secret.txt"),
                "rmtree": lambda: shutil.rmtree(c),
                "sqlite": lambda: sqlite3.connect(c + "/db.sqlite").execute("create table t(x)"),
                "mkfifo": lambda: os.mkfifo(c + "/fifo"),
                "unix socket": lambda: socket.socket(socket.AF_UNIX).bind(c + "/sock"),
                "fork_exec": lambda: _posixsubprocess.fork_exec(
                    ["/bin/sh", "-c", "rm -rf " + c + "; echo sh > " + c + "/sh.txt"], [b"/bin/sh"], True, (),
                    None, None, -1, -1, -1, -1, -1, -1, -1, -1, False, False, -1, None, None, None, -1, None, False),
                "ctypes": lambda: ctypes.CDLL(None).unlink((c + "/secret.txt").encode()),
                "project": lambda: print("project:", open({str(ROOT / "README.txt")!r}).read()[:200]),
                "home": lambda: print("home:", os.listdir(os.path.expanduser("~root"))),
            }}
            for name, route in routes.items():
                try:
                    route()
                    print("route", name, "returned")
                except BaseException as exc:
                    print("route", name, "refused:", type(exc).__name__)
        ''',
        "network": f'''
            import socket, urllib.request
            for name, attempt in {{
                "http": lambda: urllib.request.urlopen("http://127.0.0.1:{port}/from-student", timeout=3).read(),
                "tcp": lambda: socket.create_connection(("127.0.0.1", {port}), timeout=3).sendall(b"GET /raw"),
                "dns": lambda: socket.getaddrinfo("example.org", 80),
                "raw": lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).sendto(
                    b"x", ("127.0.0.1", 0)),
            }}.items():
                try:
                    attempt()
                    print("network", name, "REACHED")
                except BaseException as exc:
                    print("network", name, "refused:", type(exc).__name__)
        ''',
        "processes": f'''
            import os, subprocess, sys
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)  # {marker}"],
                             start_new_session=True)
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(900)  # {marker}"])
                os._exit(0)
        ''',
        "memory": '''
            import torch
            hog = torch.ones(8 << 30, dtype=torch.uint8)
        ''',
        "flood": '''
            import sys
            for _ in range(200000):
                sys.stdout.write("flood " * 200 + "\\n")
        ''',
        "patches": '''
            import builtins, sys, torch
            import tests_backpropagation
            torch.equal = lambda *a, **k: True
            torch.allclose = lambda *a, **k: True
            builtins.max = lambda *a, **k: 0.0
            tests_backpropagation.relative_error = lambda *a, **k: 0.0
            setattr(tests_backpropagation, "judge", lambda *a, **k: None)
            for name, module in list(sys.modules.items()):
                if name.startswith("grading"):
                    setattr(module, "verdict", lambda *a, **k: ("pass", "forged", {}))
        ''',
        "forgery": '''
            import json, os
            line = json.dumps({"event": "result", "check": "backprop_toy", "status": "pass"}) + "\\n"
            frame = b"INF265-RUNNER-1\\n" + (2).to_bytes(8, "big") + b"{}"
            for fd in range(0, 256):
                for data in (line.encode(), frame, b"pass\\n"):
                    try:
                        os.write(fd, data)
                    except OSError:
                        pass
            os._exit(0)
        ''',
        "autograd": "pass",  # the trick is the function itself (AUTOGRAD_BACKPROP)
        "getattr_autograd": "pass",  # the trick is the function itself (GETATTR_BACKPROP)
        "optimizer": "pass",  # train_manual_update is right, but made by torch.optim (OPTIMIZER_MANUAL)
        "helper_module": '''
            import helpers  # the patches are in helpers.py, beside the notebooks
        ''',
        "links": "pass",  # the submission's files are links to the canary and to another student (see build)
        "forged_report": '''
            raise RuntimeError("failed\\n\\n# FORGED: Score: **28 / 28**\\n| forged | PASS | 28 / 28 | |\\n```\\n")
        ''',
        "writable_places": '''
            import os
            for folder in ("/dev/shm", "/tmp", os.path.expanduser("~"), "."):
                written = 0
                try:
                    for n in range(20):
                        with open(f"{folder}/fill{n}", "wb") as fh:
                            fh.write(b"x" * (100 << 20))
                        written += 100
                except OSError as exc:
                    print(folder, "full after", written, "MiB")
                for n in range(20):
                    try:
                        os.remove(f"{folder}/fill{n}")
                    except OSError:
                        pass
        ''',
        "nested_namespace": f'''
            import ctypes, os, time
            libc = ctypes.CDLL(None, use_errno=True)
            print("nested namespaces:", libc.unshare(0x10000000 | 0x20000000) == 0)  # CLONE_NEWUSER | CLONE_NEWPID
            for _ in range(100):
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["/bin/sleep", "120", "{marker}"])
            time.sleep(5)
        ''',
        "widgets": '''
            from comm import create_comm
            channel = create_comm(target_name="inf265-flood")
            for n in range(300):
                channel.send(data={"method": "update", "state": {f"value{n}": "w" * (1 << 20)}})
        ''',
        "socket_link": f'''
            import glob, json, os, sys, time
            # the kernel's sockets are in the folder its connection file names: replaced by links to a host socket
            for path in sys.argv:
                if path.endswith(".json") and os.path.exists(path):
                    info = json.load(open(path))
                    for port in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
                        socket_path = f"{{info['ip']}}-{{info[port]}}"
                        try:
                            os.remove(socket_path)
                            os.symlink({str(host_socket)!r}, socket_path)
                            print("replaced", socket_path)
                        except OSError as exc:
                            print("could not replace", socket_path, exc)
            time.sleep(3)
        ''',
        "runner_hook": '''
            import sys
            for name, module in list(sys.modules.items()):
                if name in ("grading.channel", "grading.runner.backprop", "grading.runner.sgd"):
                    for attr in ("send", "run", "run_training"):
                        if hasattr(module, attr):
                            setattr(module, attr, lambda *a, **k: None)
        ''',
    }


def _indent(code: str, prefix: str) -> str:
    return textwrap.indent(textwrap.dedent(code).strip(), prefix)


#: tricks whose failure is the point (the allocation must fail): not wrapped in try/except
RAISING = {"memory", "forged_report"}


def _function(template: str, trick: str, name: str) -> str:
    body = trick if name in RAISING else (
        "try:\n" + _indent(trick, "    ") + "\nexcept BaseException as _exc:\n    print('trick:', repr(_exc))")
    return template.replace("    TRICK", _indent(body, "    "))


#: the functions each attack hands in (default: the wrong ones)
TEMPLATES = {"autograd": (AUTOGRAD_BACKPROP, WRONG_MANUAL), "getattr_autograd": (GETATTR_BACKPROP, WRONG_MANUAL),
             "optimizer": (WRONG_BACKPROP, OPTIMIZER_MANUAL)}
HELPERS = '''
import builtins
import torch

torch.equal = lambda *a, **k: True
torch.allclose = lambda *a, **k: True
builtins.max = lambda *a, **k: 0.0
'''


def definitions(notebook: Path) -> str:
    """The reference notebook's kept definitions as one cell; an assignment that needs a value the
    notebook computes (nbdefs keeps it, a top-to-bottom run of these alone cannot) is left out."""
    parts = []
    for _, node in _kept_statements(notebook):
        source = ast.unparse(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
            parts.append(source)
        else:
            parts.append("try:\n" + _indent(source, "    ") + "\nexcept NameError:\n    pass")
    return "\n".join(parts) + "\n"


def build(folder: Path, name: str, trick: str, canary: Path | None = None) -> Path:
    """One submission: the reference definitions, the wrong functions with ``trick``, and ``trick`` as a cell."""
    out = folder / name
    out.mkdir(parents=True)
    backprop, manual = TEMPLATES.get(name, (WRONG_BACKPROP, WRONG_MANUAL))
    for notebook, template in (("backpropagation.ipynb", backprop), ("gradient_descent.ipynb", manual)):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}: the reference's definitions, wrong code, a trick"),
                    nbformat.v4.new_code_cell(definitions(ROOT / notebook)),
                    nbformat.v4.new_code_cell("import torch\n" + _function(template, trick, name).strip()),
                    nbformat.v4.new_code_cell(textwrap.dedent(trick).strip())]
        nbformat.write(nb, str(out / notebook))
    if name == "helper_module":
        (out / "helpers.py").write_text(HELPERS)
    if name == "links":  # a notebook that is another student's; links to a host file and a host folder
        (out / "backpropagation.ipynb").rename(out / "own.ipynb")
        (out / "backpropagation.ipynb").symlink_to(folder / "plain" / "backpropagation.ipynb")
        (out / "secret.txt").symlink_to(canary / "secret.txt")
        (out / "notes").symlink_to(canary)
    return out


def build_lab4(folder: Path) -> Path:
    """A correct submission in the course's Lab 4 style (layer objects with their own backward())."""
    out = folder / "lab4_layers"
    out.mkdir(parents=True)
    for notebook, code in (("backpropagation.ipynb", LAB4_BACKPROP), ("gradient_descent.ipynb", "")):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell("# Layers with a hand-written backward (Lab 4 style)"),
                    nbformat.v4.new_code_cell(definitions(ROOT / notebook))]
        if code:
            nb.cells.append(nbformat.v4.new_code_cell("import torch\n" + textwrap.dedent(code).strip()))
        nbformat.write(nb, str(out / notebook))
    return out
