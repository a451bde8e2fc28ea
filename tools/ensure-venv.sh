#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment:  tools/ensure-venv.sh VENV_DIR
# The venv is reused when it was built from exactly this requirements.txt (its sha256 is recorded
# in VENV_DIR/.requirements.sha256 as the very last step). A venv without that stamp (missing,
# built from other requirements, or interrupted half-way) is deleted and built again.
set -euo pipefail
venv=${1:?usage: tools/ensure-venv.sh VENV_DIR}
req="$(cd "$(dirname "$0")/.." && pwd)/requirements.txt"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 is required, found: $("$python" --version 2>&1)." >&2
  echo "       Install Python 3.11 or run: make PYTHON=/path/to/python3.11 ..." >&2
  exit 1
fi
echo ">> building virtual environment $venv from requirements.txt (first time: 2-3 minutes)"
rm -rf "$venv"
"$python" -m venv "$venv"
# (the local mirror's "Location ... is ignored" warnings are noise: filtered out)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$want" > "$venv/.requirements.sha256"
echo ">> virtual environment ready"
