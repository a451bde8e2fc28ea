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

import textwrap
from pathlib import Path

import nbformat

from inf265 import ROOT
from inf265.nbdefs import definitions_source

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

WRONG_MANUAL = '''
def train_manual_update(n_epochs, lr, model, loss_fn, train_loader, weight_decay=0, momentum=0):
    TRICK
    return [0.0] * n_epochs
'''


def attacks(canary: Path, port: int, marker: str) -> dict[str, str]:
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
RAISING = {"memory"}


def _function(template: str, trick: str, name: str) -> str:
    body = trick if name in RAISING else (
        "try:\n" + _indent(trick, "    ") + "\nexcept BaseException as _exc:\n    print('trick:', repr(_exc))")
    return template.replace("    TRICK", _indent(body, "    "))


def build(folder: Path, name: str, trick: str) -> Path:
    """One submission: the reference definitions, the wrong functions with ``trick``, and ``trick`` as a cell."""
    out = folder / name
    out.mkdir(parents=True)
    backprop = AUTOGRAD_BACKPROP if name == "autograd" else WRONG_BACKPROP
    for notebook, template in (("backpropagation.ipynb", backprop), ("gradient_descent.ipynb", WRONG_MANUAL)):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}: the reference's definitions, wrong code, a trick"),
                    nbformat.v4.new_code_cell(definitions_source(ROOT / notebook)),
                    nbformat.v4.new_code_cell("import torch\n" + _function(template, trick, name).strip()),
                    nbformat.v4.new_code_cell(textwrap.dedent(trick).strip())]
        nbformat.write(nb, str(out / notebook))
    return out
