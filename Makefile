# INF265 Project 1 bundle. The two commands a newcomer needs:
#   make run    install, check the data, execute every notebook in place, build report/report.pdf
#   make test   pytest unit tests + nbval on every notebook
# Others: make bench, make report, make grade SUBMISSIONS="dir1 dir2 ..." (or a glob), make gradescope,
#         make data, make clean-venv
#
# Settings (environment or make VAR=...):
#   DATA_DIR   data folder (default: data/). Offline here: DATA_DIR=../shared/data
#   VENV       virtual environment folder (default: .venv)
#   PYTHON     Python 3.11 used to create the venv (default: python3)
#   ATEN_CPU_CAPABILITY  torch's CPU code path, pinned to avx2 for reproducible outputs

SHELL      := /bin/bash
VENV       ?= .venv
PYTHON     ?= python3
PY         := $(VENV)/bin/python
DATA_DIR   ?= data
export DATA_DIR PYTHON
# Notebook kernels must use matplotlib's inline backend (figures are part of the outputs nbval
# compares); an MPLBACKEND from the caller's environment (e.g. Agg) would override it.
unexport MPLBACKEND
# The last bits of a result depend on the CPU's vector code path in torch's kernels (AVX2 or
# AVX-512). Pinned to AVX2, so that committed outputs and results files come out the same on
# machines with and without AVX-512 (and `make test` leaves the clone unchanged). MKL's own pin
# (MKL_CBWR) is not used: it makes results depend on the number of threads.
ATEN_CPU_CAPABILITY ?= avx2
export ATEN_CPU_CAPABILITY

# Execution order matters: later notebooks and the report read earlier results.
NOTEBOOKS  := backpropagation.ipynb gradient_descent.ipynb toy_problems.ipynb
PYTEST_ARGS ?=
GRADE_ARGS ?=

.PHONY: run test unit nbval bench report grade grade-setup gradescope data venv clean-venv

venv:
	@tools/ensure-venv.sh $(VENV)

data: venv
	@$(PY) -m inf265.data

# An interrupted run (Ctrl-C, SIGTERM) ends with execute's one line: make re-raises the signal on
# itself instead of adding its own "Error 130", and the report is not built from half a run.
run: data
	@$(PY) -m inf265.execute $(NOTEBOOKS) || { rc=$$?; [ $$rc -gt 128 ] || exit $$rc; kill -s $$((rc - 128)) $$PPID; exit 0; }
	@$(MAKE) --no-print-directory report

# One pytest run: unit tests (tests/) and nbval on every notebook, one summary line.
# pytest's exit code 5 ("no tests collected") is reported, not treated as a crash.
NBVAL      := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg
PYTEST      = rc=0; $(PY) -m pytest $(1) $(PYTEST_ARGS) || rc=$$?; \
              if [ $$rc -eq 5 ]; then echo "note: pytest collected no tests"; rc=0; fi; exit $$rc

test: venv
	@$(call PYTEST,tests $(NOTEBOOKS) $(NBVAL))

unit: venv
	@$(call PYTEST,tests)

nbval: venv
	@$(call PYTEST,$(NOTEBOOKS) $(NBVAL))

bench: venv
	@set -e; for b in bench/bench_*.py; do $(PY) $$b; done

report: venv
	@$(PY) -m inf265.report

# Grade students' folders: SUBMISSIONS="dir1 dir2 ..." or a glob (SUBMISSIONS='submissions/*');
# SUBMISSION=dir for one. Reports and grades.csv go to grading-out/ (GRADE_ARGS="--out DIR ...").
# SUBMISSIONS may also be Canvas's "Download Submissions" zip, a class folder or students' zips.
# grade-setup installs the packages students may import (rubric's [environment] packages) once.
SUBMISSIONS ?= $(SUBMISSION)
RUBRIC ?= grading/rubric.toml
grade: grade-setup
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=\"dir1 dir2 ...\" (or SUBMISSIONS='submissions/*', or SUBMISSIONS=submissions.zip)" >&2; exit 2; }
	@$(PY) -m grading $(SUBMISSIONS) --rubric $(RUBRIC) $(GRADE_ARGS)

grade-setup: venv
	@pkgs="$$($(PY) -m grading.rubric --packages $(RUBRIC))" && \
	if [ "$$pkgs" != "$$(cat $(VENV)/.grade-packages 2>/dev/null)" ]; then \
	  echo "installing the students' packages (rubric [environment]): $$(echo $$pkgs)"; \
	  $(PY) -m pip install --quiet --disable-pip-version-check $$pkgs && echo "$$pkgs" > $(VENV)/.grade-packages; fi

# Gradescope's autograder package (setup.sh, run_autograder, the grader and the harness)
gradescope: venv
	@$(PY) -m grading.gradescope build dist/gradescope-autograder.zip

clean-venv:
	rm -rf $(VENV)

# The students' hand-out: dist/student/ and dist/inf265-project1-student.zip (python -m inf265.release):
# notebooks with their solution regions stubbed, harness and self-checks, helpers, README, Makefile.
# JupyterLab on the project with the venv's Python as kernel (LAB_ARGS="--no-browser --port=8890" ...).
# check: what students' make check does, on these notebooks: each notebook executed (in memory) with
# the grader's time limit per cell (grading/rubric.toml); its self-check cells must pass. The hand-out
# has inf265/executor.py as tools/executor.py: here check.py finds it on PYTHONPATH.
LAB_ARGS ?=
.PHONY: release lab check

release: venv
	@$(PY) -m inf265.release

lab: venv
	@$(PY) -m jupyterlab --ServerApp.root_dir=. $(LAB_ARGS)

check: venv
	@limit=$$($(PY) -m inf265.release --cell-timeout) && \
	PYTHONPATH="$(CURDIR)/inf265" $(PY) release/tools/check.py --timeout "$$limit" backpropagation.ipynb gradient_descent.ipynb
