# Imported at start-up by every Python process of the grading sandbox (PYTHONPATH); installs the
# file-system/process guard of grading/guard.py when INF265_SANDBOX_ROOTS is set.
import os as _os

if _os.environ.get("INF265_SANDBOX_ROOTS"):
    import grading.guard as _guard

    _guard.install_from_environment()
    del _guard
del _os
