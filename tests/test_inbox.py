"""The grader's inbox (grading/inbox.py): Canvas's bulk download, class folders, students' zips, and
hostile archives; the validity of a handed-in notebook. Nothing here runs students' code."""
from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest

from grading import inbox

import canvas_class

FIXTURES = canvas_class.FIXTURES
BP, GD = "backpropagation.ipynb", "gradient_descent.ipynb"


def _collect(tmp_path, *paths, limits=None):
    stage = tmp_path / "stage"
    stage.mkdir(exist_ok=True)
    return {s.name: s for s in inbox.collect(list(paths), stage, limits)}


def test_canvas_bulk_download_gives_one_submission_per_student(tmp_path):
    subs = _collect(tmp_path, canvas_class.build(tmp_path))
    assert set(subs) == {"hansenkari_1001", "olsenper_1002", "berglie_1003", "nilsenola_1004", "dahlsigrid_1005"}
    assert {n: s.lms_user_id for n, s in subs.items()} == {n: n.split("_")[1] for n in subs}
    assert {n for n, s in subs.items() if s.late} == {"olsenper_1002"}
    # the resubmission (-1) wins over the truncated first version; the case of the name does not matter
    han = subs["hansenkari_1001"]
    assert (han.folder / BP).read_bytes() == (FIXTURES / "skeleton_conventions" / BP).read_bytes()
    assert (han.folder / GD).read_bytes() == (FIXTURES / "skeleton_conventions" / GD).read_bytes()
    assert any("replaced by the resubmission hansenkari_1001_5001_backpropagation-1.ipynb" in n for n in han.notes)
    assert han.lms_name == "hansenkari" and not han.problem
    # a zipped project folder: notebooks one level down, found and staged under their names
    ber = subs["berglie_1003"]
    assert (ber.folder / BP).read_bytes() == (FIXTURES / "backprop_as_method" / BP).read_bytes()
    assert "project/INF265-P1/report.pdf" in ber.files
    # the original names are recovered (prefix stripped), other files kept beside the notebooks
    assert sorted(subs["olsenper_1002"].files) == ["README.txt", BP, GD, "helpers.py"]
    assert (subs["olsenper_1002"].folder / "helpers.py").is_file()
    # no notebook: not gradable, with the files found
    assert "holds neither notebook" in subs["dahlsigrid_1005"].problem
    assert "files found: report.pdf" in subs["dahlsigrid_1005"].problem


def test_the_unpacked_canvas_folder_is_read_the_same_way(tmp_path):
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(canvas_class.build(tmp_path)) as z:
        z.extractall(unpacked)
    subs = _collect(tmp_path, unpacked)
    assert len(subs) == 5 and subs["olsenper_1002"].late


def test_class_folders_at_any_depth_names_in_any_case_and_students_zips(tmp_path):
    klass = tmp_path / "class"
    a = klass / "section1" / "alice" / "my project"
    a.mkdir(parents=True)
    (a / "Backpropagation (1).ipynb").write_bytes((FIXTURES / "skeleton_conventions" / BP).read_bytes())
    (a / "gradient_descent-2.ipynb").write_bytes((FIXTURES / "skeleton_conventions" / GD).read_bytes())
    (a / ".ipynb_checkpoints").mkdir()
    (a / ".ipynb_checkpoints" / "backpropagation-checkpoint.ipynb").write_text("{}")
    b = klass / "section2"
    b.mkdir()
    with zipfile.ZipFile(b / "bob.zip", "w") as z:  # a zip inside a zip, notebooks two levels down
        inner = tmp_path / "inner.zip"
        with zipfile.ZipFile(inner, "w") as zi:
            zi.writestr(f"p1/src/{BP}", (FIXTURES / "backprop_as_method" / BP).read_bytes())
        z.write(inner, "work.zip")
        z.writestr(f"{GD}", (FIXTURES / "backprop_as_method" / GD).read_bytes())
    (klass / "section2" / "carol").mkdir()
    (klass / "section2" / "carol" / "notes.txt").write_text("no notebook")
    (klass / "section2" / "carol" / "project.zip").write_bytes(b"not a zip")
    subs = _collect(tmp_path, klass)
    assert set(subs) == {"alice", "bob", "carol"}
    assert (subs["alice"].folder / BP).read_bytes() == (FIXTURES / "skeleton_conventions" / BP).read_bytes()
    assert (subs["bob"].folder / BP).read_bytes() == (FIXTURES / "backprop_as_method" / BP).read_bytes()
    assert (subs["bob"].folder / GD).is_file()
    assert "files found: notes.txt, project.zip" in subs["carol"].problem
    assert any("not a readable zip" in n for n in subs["carol"].notes)


def test_a_students_folder_with_the_exact_names_is_graded_in_place(tmp_path):
    sub = _collect(tmp_path, FIXTURES / "skeleton_conventions")["skeleton_conventions"]
    assert sub.folder == FIXTURES / "skeleton_conventions" and not sub.notes


@pytest.mark.parametrize("name, part", [("backpropagation.ipynb", "backprop"), ("Backpropagation-3.ipynb", "backprop"),
                                        ("GRADIENT DESCENT (2).ipynb", "sgd"), ("gradient-descent.ipynb", "sgd"),
                                        ("backpropagation-checkpoint.ipynb", None), ("report.pdf", None),
                                        ("toy_problems.ipynb", None)])
def test_notebook_names(name, part):
    assert inbox.part_of(name) == part


# ------------------------------------------------------------------------------- hostile archives

def _zip(path: Path, members: dict, links: dict = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in dict(links).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return path


def test_traversal_absolute_paths_and_links_are_refused(tmp_path):
    bp = (FIXTURES / "skeleton_conventions" / BP).read_bytes()
    evil = _zip(tmp_path / "evil.zip", {BP: bp, "../../escaped.txt": "x", "/etc/evil.txt": "x",
                                        "a/../../up.txt": "x", "C:/windows.txt": "x"},
                links={"link.ipynb": "/etc/passwd", "gradient_descent.ipynb": "../../secret"})
    sub = _collect(tmp_path, evil)["evil"]
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "up.txt").exists()
    assert not any(p.is_symlink() for p in (tmp_path / "stage").rglob("*"))
    refused = " ".join(sub.notes)
    for what in ("'../../escaped.txt' refused", "'/etc/evil.txt' refused (an absolute path)",
                 "'link.ipynb' refused (a link)", "'gradient_descent.ipynb' refused (a link)", "'C:/windows.txt'"):
        assert what in refused, refused
    assert (sub.folder / BP).read_bytes() == bp and not (sub.folder / GD).exists()


def test_a_zip_bomb_stops_at_the_bound(tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", {BP: (FIXTURES / "skeleton_conventions" / BP).read_bytes(),
                                        "data.bin": b"\0" * (8 << 20)})
    sub = _collect(tmp_path, bomb, limits=inbox.Limits(member_bytes=1 << 20))["bomb"]
    assert any("larger than 1 MiB unpacked" in n and "zip bomb" in n for n in sub.notes), sub.notes
    assert all(p.stat().st_size <= 1 << 20 for p in (tmp_path / "stage").rglob("*") if p.is_file())
    many = _zip(tmp_path / "many.zip", {f"f{i}.txt": "x" for i in range(50)})
    sub = _collect(tmp_path, many, limits=inbox.Limits(members=10))["many"]
    assert any("more than 10 files" in n for n in sub.notes) and len(sub.files) == 10


def test_zips_nested_too_deep_are_not_unpacked(tmp_path):
    inner = _zip(tmp_path / "l3.zip", {BP: (FIXTURES / "skeleton_conventions" / BP).read_bytes()})
    for level in (2, 1):
        inner = _zip(tmp_path / f"l{level}.zip", {inner.name: inner.read_bytes()})
    sub = _collect(tmp_path, inner, limits=inbox.Limits(depth=2))["l1"]
    assert any("nested more than 2 deep" in n for n in sub.notes) and sub.problem


# ------------------------------------------------------------------------------- readable notebooks

def test_unreadable_notebooks_say_where(tmp_path):
    good = FIXTURES / "skeleton_conventions" / BP
    assert inbox.unreadable(good) is None
    cut = tmp_path / BP
    cut.write_bytes(good.read_bytes()[:3000])
    message = inbox.unreadable(cut)
    lines = good.read_bytes()[:3000].decode().splitlines()
    assert message.startswith(f"{BP} is not a valid notebook (line {len(lines)}, column ")
    cut.write_text(json.dumps({"cells": [{"cell_type": "code"}], "nbformat": 4, "nbformat_minor": 5}))
    assert "valid JSON, but not nbformat" in inbox.unreadable(cut)
    assert "over the limit of 0.001 MiB" in inbox.unreadable(good, max_mib=0.001)


def test_gradescope_hand_in_of_a_zipped_project_is_one_submission(tmp_path):
    upload = tmp_path / "submission"
    upload.mkdir()
    _zip(upload / "project.zip", {f"p1/{BP}": (FIXTURES / "skeleton_conventions" / BP).read_bytes(),
                                  f"p1/{GD}": (FIXTURES / "skeleton_conventions" / GD).read_bytes()})
    _zip(upload / "old.zip", {"notes.txt": "x"})  # two zips: still one student's hand-in
    sub = inbox.single(upload, tmp_path / "stage")
    assert sub.name == "submission" and not sub.problem
    assert (sub.folder / BP).read_bytes() == (FIXTURES / "skeleton_conventions" / BP).read_bytes()
    assert inbox.single(FIXTURES / "skeleton_conventions", tmp_path / "stage").folder == \
        FIXTURES / "skeleton_conventions"
