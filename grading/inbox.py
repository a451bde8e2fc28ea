"""The instructor's inbox: whatever the LMS or the students hand over, as one folder per submission.

:func:`collect` takes what is on the command line (folders, zips, globs already expanded) and
returns one :class:`Submission` per student:

- Canvas's "Download Submissions" zip, or the folder it unpacks to: every file flattened and
  renamed ``name[_LATE]_userid_submissionid_originalname``; files grouped by user id, the original
  name recovered, of a resubmitted file (``name-1.ipynb``, ``name-2.ipynb``) the highest number
  kept, ``LATE`` recorded;
- a folder of per-student folders at any depth (a folder holding two or more students' work is a
  class; each of its entries is looked at the same way), or one student's folder;
- in a student's work: zipped project folders, nested zips, notebooks one or more levels down, in
  another case or with an LMS suffix (``Backpropagation (1).ipynb``, ``gradient_descent-2.ipynb``).

Every submission that is not already a folder with the exact notebook names is staged (copied
under the caller's staging folder, zips unpacked, the chosen notebooks under their exact names);
the student's files are never changed. Zips are hostile input: members with absolute paths,
``..``, links or encryption are refused, and members, bytes and nesting are bounded (a zip bomb
stops at the bound and is reported).
"""
from __future__ import annotations

import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

#: the notebooks of a submission, by part
NOTEBOOKS = {"backprop": "backpropagation.ipynb", "sgd": "gradient_descent.ipynb"}
IGNORED_DIRS = {"__MACOSX", ".ipynb_checkpoints", "__pycache__", ".git", ".venv", "venv", "node_modules"}
CANVAS = re.compile(r"^(?P<name>[^_/]+?)(?P<late>_LATE)?_(?P<uid>\d+)_(?P<sid>\d+)_(?P<orig>.+)$")
RESUBMISSION = re.compile(r"^(?P<base>.+?)-(?P<n>\d+)(?P<ext>\.[^.]+)$")


@dataclass
class Limits:
    """Bounds on what unpacking one top-level input may produce (zip bombs stop here)."""
    members: int = 5000
    bytes: int = 2 * 1024 ** 3
    member_bytes: int = 512 * 1024 ** 2
    depth: int = 3


@dataclass
class Submission:
    name: str                      # the report folder's name (OUT/<name>/)
    folder: Path                   # the folder graded: exact notebook names at its top level
    source: str                    # where it came from, as the instructor named it
    lms_user_id: str = ""
    lms_name: str = ""
    late: bool = False
    files: list[str] = field(default_factory=list)    # the student's files, relative paths
    notes: list[str] = field(default_factory=list)    # what the inbox did: renamings, refusals, resubmissions
    problem: str = ""              # set when no notebook could be identified: why, with the files found
    root: Path | None = None       # the student's whole hand-in (``files`` are relative to it)

    @property
    def files_root(self) -> Path:
        return self.root or self.folder


class _Budget:
    def __init__(self, limits: Limits):
        self.limits, self.members, self.bytes = limits, limits.members, limits.bytes


def _ignored(path: Path, root: Path) -> bool:
    rel = path.relative_to(root).parts
    return any(p in IGNORED_DIRS for p in rel[:-1]) or rel[-1].startswith("._") or rel[-1] == ".DS_Store"


def extract(archive: Path, dest: Path, budget: _Budget, notes: list[str], depth: int = 1, nested: bool = True) -> bool:
    """Unpack ``archive`` into ``dest`` safely, then (``nested``) the zips it held, up to the depth bound."""
    label = archive.name
    try:
        z = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        notes.append(f"{label}: not a readable zip ({exc}); left as it is")
        return False
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with z:
        for info in z.infolist():
            name = info.filename.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if info.is_dir() or not parts:
                continue
            mode = info.external_attr >> 16
            why = ("an absolute path" if name.startswith("/") or re.match(r"^[A-Za-z]:", name) else
                   "a path that leaves the archive (..)" if ".." in parts else
                   "a link" if stat.S_ISLNK(mode) else
                   "encrypted" if info.flag_bits & 0x1 else None)
            if why:
                notes.append(f"{label}: member {name!r} refused ({why})")
                continue
            budget.members -= 1
            if budget.members < 0:
                notes.append(f"{label}: more than {budget.limits.members} files; the rest was not unpacked")
                break
            target = dest.joinpath(*parts)
            if root not in target.resolve().parents:
                notes.append(f"{label}: member {name!r} refused (a path that leaves the archive)")
                continue
            if target.exists() or any(p.is_file() for p in target.parents if root in p.parents):
                notes.append(f"{label}: member {name!r} skipped (a file of that name was already unpacked)")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written, too_big = 0, None
            with z.open(info) as src, open(target, "xb") as dst:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > budget.limits.member_bytes:
                        too_big = f"member {name!r} is larger than {budget.limits.member_bytes >> 20} MiB unpacked"
                    elif written > budget.bytes:
                        too_big = f"more than {budget.limits.bytes >> 20} MiB unpacked in all"
                    if too_big:
                        break
                    dst.write(chunk)
            if too_big:
                target.unlink()
                notes.append(f"{label}: {too_big}; unpacking stopped there (a zip bomb?)")
                budget.bytes = 0
                break
            budget.bytes -= written
    for inner in sorted(p for p in dest.rglob("*") if nested and p.is_file() and p.suffix.lower() == ".zip"):
        if depth >= budget.limits.depth:
            notes.append(f"{inner.name}: zips nested more than {budget.limits.depth} deep are not unpacked")
            continue
        if extract(inner, inner.with_suffix(""), budget, notes, depth + 1):
            inner.unlink()
    return True


def _copy(src: Path, dest: Path) -> None:
    """A copy of a student's folder, links left out (they could point anywhere on this machine)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_symlink() or path.name in IGNORED_DIRS:
            continue
        if path.is_dir():
            _copy(path, dest / path.name)
        elif path.is_file():
            shutil.copyfile(path, dest / path.name)


def part_of(filename: str) -> str | None:
    """Which notebook a file name is, whatever its case, spaces or LMS suffix; None for other files."""
    stem, dot, ext = filename.lower().rpartition(".")
    if not dot or ext != "ipynb" or stem.endswith("-checkpoint"):
        return None
    stem = re.sub(r"[\s\-]+", "_", stem)
    if "backprop" in stem:
        return "backprop"
    if "gradient_descent" in stem or "gradientdescent" in stem:
        return "sgd"
    return None


def _rank(path: Path, root: Path) -> tuple:
    """Prefer the exact name, then the highest resubmission number, then the shallowest."""
    exact = path.name.lower() in NOTEBOOKS.values()
    numbers = [int(n) for n in re.findall(r"(?:-|\(|_)(\d+)\)?\.ipynb$", path.name)]
    return (not exact, -(numbers[0] if numbers else 0), len(path.relative_to(root).parts), path.name)


def files_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and not _ignored(p, root))


def settle(raw: Path, dest: Path, sub: Submission) -> None:
    """Stage the student's unpacked files ``raw`` as ``dest``: the folder holding the chosen
    notebook(s), each under its exact name; ``sub.problem`` when no notebook is found."""
    sub.files, sub.root = files_of(raw), raw
    found: dict[str, list[Path]] = {}
    for rel in sub.files:
        part = part_of(Path(rel).name)
        if part:
            found.setdefault(part, []).append(raw / rel)
    if not found:
        listing = ", ".join(sub.files[:30]) + (f" and {len(sub.files) - 30} more" if len(sub.files) > 30 else "")
        content = "it is empty" if not sub.files else "it holds neither notebook"
        sub.problem = (f"{sub.source} is not a submission: {content} ({' nor '.join(NOTEBOOKS.values())}, in any "
                       f"case, with an LMS suffix or inside a zip, at any depth); files found: {listing or 'none'}")
        return
    chosen = {part: sorted(paths, key=lambda p: _rank(p, raw))[0] for part, paths in found.items()}
    home = chosen.get("backprop", chosen.get("sgd")).parent
    _copy(home, dest)
    for part, path in chosen.items():
        exact = NOTEBOOKS[part]
        rel = path.relative_to(raw)
        if len(found[part]) > 1:
            others = ", ".join(str(p.relative_to(raw)) for p in found[part] if p != path)
            sub.notes.append(f"{exact}: {rel} chosen (also found: {others})")
        elif str(rel) != exact:
            sub.notes.append(f"{exact}: found as {rel}")
        if path.parent == home and path.name == exact:
            continue
        if (dest / exact).exists():  # an older or other version under the exact name: kept aside
            (dest / exact).rename(dest / f"{exact}.not-chosen")
        if path.parent == home:
            (dest / path.name).rename(dest / exact)
        else:
            shutil.copyfile(path, dest / exact)


# ---------------------------------------------------------------------------------- the layouts

def _canvas_files(folder: Path) -> dict[str, list[tuple[re.Match, Path]]]:
    groups: dict[str, list[tuple[re.Match, Path]]] = {}
    for path in sorted(folder.iterdir()):
        m = CANVAS.match(path.name) if path.is_file() else None
        if m:
            groups.setdefault(m["uid"], []).append((m, path))
    return groups


def is_canvas(folder: Path) -> bool:
    """A Canvas bulk download: most top-level files named ``name[_LATE]_userid_submissionid_original``."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and sum(bool(CANVAS.match(p.name)) for p in files) * 2 >= len(files)


def _canvas(folder: Path, stage: Path, source: str, budget: _Budget, depth: int = 0) -> list[Submission]:
    out = []
    for uid, entries in _canvas_files(folder).items():
        name = entries[0][0]["name"]
        sub = Submission(name=f"{name}_{uid}", folder=_fresh(stage / f"{name}_{uid}"), source=f"{source}: {name} (Canvas "
                         f"user {uid})", lms_user_id=uid, lms_name=name)
        best: dict[str, tuple[int, int, re.Match, Path]] = {}
        for m, path in entries:
            orig = m["orig"]
            r = RESUBMISSION.match(orig)
            base, number = (r["base"] + r["ext"], int(r["n"])) if r else (orig, 0)
            key = base.lower()
            rank = (number, int(m["sid"]))
            if key not in best or rank > best[key][:2]:
                if key in best:
                    sub.notes.append(f"{best[key][3].name} replaced by the resubmission {path.name}")
                best[key] = (*rank, m, path)
            else:
                sub.notes.append(f"{path.name} replaced by the resubmission {best[key][3].name}")
        raw = _fresh(stage / ".raw" / sub.name)
        raw.mkdir(parents=True)
        for key, (_, _, m, path) in best.items():
            base = RESUBMISSION.match(m["orig"])
            orig = base["base"] + base["ext"] if base else m["orig"]
            if m["late"]:
                sub.late = True
            if orig.lower().endswith(".zip"):
                extract(path, raw / orig[:-4], budget, sub.notes, depth + 1)
            else:
                shutil.copyfile(path, raw / orig)
        settle(raw, sub.folder, sub)
        out.append(sub)
    return out


def _units(folder: Path) -> list[Path]:
    """The entries of a folder that may hold a submission: zips, and folders with a notebook or a zip inside."""
    units = []
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or path.name in IGNORED_DIRS or path.name.startswith("."):
            continue
        if path.is_file() and path.suffix.lower() == ".zip":
            units.append(path)
        elif path.is_dir() and any((p.suffix.lower() == ".zip" or part_of(p.name)) and not _ignored(p, folder)
                                   for p in path.rglob("*") if p.is_file()):
            units.append(path)
    return units


def _one(path: Path, stage: Path, source: str, budget: _Budget, name: str | None = None, depth: int = 0) -> Submission:
    """One student's work (a folder or a zip) staged."""
    name = name or (path.stem if path.is_file() else path.name)
    sub = Submission(name=name, folder=_fresh(stage / name), source=source)
    raw = _fresh(stage / ".raw" / name)
    if path.is_file():
        extract(path, raw, budget, sub.notes, depth + 1)
    else:
        _copy(path, raw)
        for inner in sorted(p for p in raw.rglob("*") if p.is_file() and p.suffix.lower() == ".zip"):
            if depth >= budget.limits.depth:
                sub.notes.append(f"{inner.name}: zips nested more than {budget.limits.depth} deep are not unpacked")
            elif extract(inner, inner.with_suffix(""), budget, sub.notes, depth + 1):
                inner.unlink()
    settle(raw, sub.folder, sub)
    return sub


def _is_group(folder: Path) -> bool:
    """A folder of several students' work (no notebook of its own, two or more entries with work)."""
    return not any(p.is_file() and part_of(p.name) for p in folder.iterdir()) and len(_units(folder)) >= 2


def _walk(folder: Path, stage: Path, source: str, budget: _Budget, name: str | None,
          group: bool = False, depth: int = 0) -> list[Submission]:
    """The submissions in ``folder`` (``depth``: how many zips deep it was unpacked)."""
    if is_canvas(folder):
        return _canvas(folder, stage, source, budget, depth)
    if not group and not _is_group(folder):
        if all((folder / nb).is_file() for nb in NOTEBOOKS.values()) or not any(folder.iterdir()):
            # already what the grader reads (or empty): graded in place
            return [Submission(name=name or folder.name, folder=folder, source=source, files=files_of(folder))]
        return [_one(folder, stage, source, budget, name, depth)]
    units = _units(folder)
    # the students of a class sit at the same depth: when some entries are groups (sections), the
    # others with a single student's work inside are groups of one
    groups = {u for u in units if u.is_dir() and _is_group(u)}
    if groups:
        groups |= {u for u in units if u.is_dir() and not any(p.is_file() and part_of(p.name) for p in u.iterdir())}
    else:  # every entry is a student: those without any notebook are reported with their files
        units += [p for p in sorted(folder.iterdir()) if p.is_dir() and p not in units and not p.name.startswith(".")
                  and p.name not in IGNORED_DIRS and any(p.iterdir())]
    out = []
    for unit in sorted(units):
        label = unit.stem if unit.is_file() else unit.name
        if unit.is_file():
            unpacked = _fresh(stage / ".zips" / label)
            extract(unit, unpacked, budget, notes := [], depth + 1, nested=False)
            subs = _walk(unpacked, stage, f"{source}/{unit.name}", budget, label, depth=depth + 1)
            for s in subs:
                s.notes[:0] = notes
            out += subs
        else:
            out += _walk(unit, stage, f"{source}/{unit.name}", budget, None, group=unit in groups, depth=depth)
    return out


def collect(paths: list[Path], stage: Path, limits: Limits | None = None) -> list[Submission]:
    """One :class:`Submission` per student in ``paths`` (folders, zips); staged copies go below ``stage``."""
    out: list[Submission] = []
    for path in paths:
        budget = _Budget(limits or Limits())
        if not path.exists() or path.is_file() and path.suffix.lower() != ".zip":
            # not a submission: grading.grade.check_folder says what it is
            out.append(Submission(name=path.resolve().name, folder=path, source=str(path)))
        elif path.is_file():
            notes: list[str] = []
            unpacked = _fresh(stage / ".zips" / path.stem)
            extract(path, unpacked, budget, notes, nested=False)  # a class's zip: each student's zips stay theirs
            subs = _walk(unpacked, stage, str(path), budget, path.stem, depth=1)
            for s in subs:
                s.notes[:0] = notes
            out += subs
        else:
            out += _walk(path, stage, str(path), budget, path.resolve().name)
    _unique(out)
    return out


def single(path: Path, stage: Path, name: str = "submission") -> Submission:
    """``path`` as one student's hand-in whatever its layout (Gradescope's /autograder/submission)."""
    if not path.is_dir() or all((path / nb).is_file() for nb in NOTEBOOKS.values()) or not any(path.iterdir()):
        return Submission(name=name, folder=path, source=str(path), files=files_of(path) if path.is_dir() else [])
    return _one(path, stage, str(path), _Budget(Limits()), name)


def _unique(subs: list[Submission]) -> None:
    """Two students of the same folder name (two sections): the later ones get -2, -3..."""
    seen: dict[str, int] = {}
    for sub in subs:
        n = seen.get(sub.name, 0) + 1
        seen[sub.name] = n
        if n > 1:
            sub.notes.append(f"another submission is also named {sub.name}: reported as {sub.name}-{n}")
            sub.name = f"{sub.name}-{n}"


def _fresh(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... when a staged folder of that name exists already."""
    n, out = 1, path
    while out.exists():
        n += 1
        out = path.with_name(f"{path.name}-{n}")
    return out


def unreadable(path: Path, max_mib: float = 50) -> str | None:
    """Why a handed-in notebook cannot be read (not JSON, not nbformat, too large), or None."""
    st = path.stat()
    return _unreadable(path, max_mib, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _unreadable(path: Path, max_mib: float, _size: int, _mtime: int) -> str | None:
    """(read once per version of the file: the grader asks at every step)"""
    import json
    import warnings

    import nbformat

    size = _size
    if size > max_mib * 1024 ** 2:
        return (f"{path.name} is {size / 1024 ** 2:.0f} MiB, over the limit of {max_mib:g} MiB for a notebook "
                f"(rubric: [limits] notebook_mib)")
    raw = path.read_bytes()
    with warnings.catch_warnings():
        return _invalid(path, raw, json, nbformat, warnings)


def _invalid(path, raw, json, nbformat, warnings) -> str | None:
    try:
        data = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        return f"{path.name} is not a valid notebook (line {exc.lineno}, column {exc.colno}): {exc.msg}"
    except RecursionError:  # JSON nested thousands deep: no notebook is
        return f"{path.name} is not a valid notebook (JSON nested too deep)"
    try:
        nb = nbformat.from_dict(data)
        warnings.simplefilter("ignore")  # (inside catch_warnings) nbformat's warnings on missing cell ids
        if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
            raise nbformat.ValidationError("no cells")
        nbformat.validate(nbformat.convert(nb, 4) if nb.get("nbformat", 4) != 4 else nb)
    except Exception as exc:  # noqa: BLE001 - nbformat's errors are of several kinds
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"{path.name} is not a valid notebook (valid JSON, but not nbformat: {first})"
    return None
