"""A corpus of bad inputs and options, each through the command that consumes it.

For every case: exit status 2, exactly one stderr line, starting ``error:`` and naming the culprit
(file, column, row or option), no traceback, and nothing written (every file in the case's folder,
inputs and any run folder it reads keeps its size and modification time, and no path is added).
``info`` lists an unusable stack with its problem instead of counting it as found.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from helpers.deformation_data import ADK
from helpers.optimize_cli import QUICK, optimize_command
from napari_dynamight.cli import main
from napari_dynamight.engine.io.mrc import write_map

NO_CUDA = "--device cuda"  # replaced by an unusable device name where CUDA exists


@dataclass
class Case:
    """The folder of one case, with helpers that make its inputs."""

    root: Path
    sim: object
    run_source: Path
    monkeypatch: pytest.MonkeyPatch
    _run: Path | None = field(default=None)

    @property
    def out(self) -> Path:
        return self.root / "out"

    def file(self, name: str, text: str = "x") -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def star(self, edit=None, stack: str = "link") -> Path:
        """The tiny set's STAR in ``root/in``, edited by ``edit(blocks)``, beside its stack (a link,
        or ``stack`` = 'truncated' / 'text')."""
        folder = self.root / "in"
        folder.mkdir(exist_ok=True)
        source = self.sim.star.parent / "particles.mrcs"
        if stack == "link":
            (folder / "particles.mrcs").symlink_to(source)
        elif stack == "truncated":
            (folder / "particles.mrcs").write_bytes(
                source.read_bytes()[: source.stat().st_size // 2]
            )
        else:
            (folder / "particles.mrcs").write_text("not an MRC file\n")
        blocks = starfile.read(self.sim.star, always_dict=True)
        if edit is not None:
            edit(blocks)
        starfile.write(blocks, folder / "particles.star")
        return folder / "particles.star"

    def map(self, name: str, volume, voxel: float = 2.5) -> Path:
        path = self.root / name
        write_map(path, np.asarray(volume, np.float32), voxel)
        return path

    @property
    def run(self) -> Path:
        """A copy of the finished quick run in ``root/run``."""
        if self._run is None:
            self._run = self.root / "run"
            shutil.copytree(self.run_source, self._run)
        return self._run

    def unfinished_run(self) -> Path:
        info = json.loads((self.run / "run.json").read_text())
        info["result"] = None
        (self.run / "run.json").write_text(json.dumps(info))
        return self.run

    def od(self, *extra: str, star: Path | None = None, model: bool = True) -> list[str]:
        args = optimize_command(self.sim, self.out, *extra, star=star)
        if not model:
            at = args.index("--consensus-model")
            del args[at : at + 2]
        return args

    def fc(self, *extra: str) -> list[str]:
        return [
            "fit-consensus",
            "--consensus",
            str(self.sim.consensus),
            "--output-directory",
            str(self.out),
            "--steps",
            "2",
            *extra,
        ]

    def simulate(self, *extra: str) -> list[str]:
        return [
            "simulate",
            "--structure",
            str(ADK / "adk_closed.pdb"),
            "--trajectory",
            str(ADK / "adk_dims.dcd"),
            "--n-particles",
            "8",
            "--box",
            "32",
            "--output-directory",
            str(self.out),
            *extra,
        ]

    def resume(self, *extra: str, star: Path | None = None) -> list[str]:
        """``optimize-deformations --resume`` into the copy of the finished run."""
        args = optimize_command(self.sim, self.run, "--resume", *extra, star=star)
        return args

    def run_with_file(self, name: str) -> Path:
        """The run copy with a file where the folder ``name`` belongs."""
        (self.run / name).write_text("x")
        return self.run

    def decode(self, *extra: str, run: Path | None = None) -> list[str]:
        picked = self.file("picked.txt", "1 2\n")
        return [
            "decode",
            str(run or self.run),
            "--particles",
            str(picked),
            "--output-directory",
            str(self.out),
            *extra,
        ]

    def unwritable(self) -> Path:
        """A folder that the output check sees as not writable (as a read-only mount would be)."""
        from napari_dynamight.engine.io import output_paths

        locked = self.root / "locked"
        locked.mkdir()
        real = output_paths._writable
        self.monkeypatch.setattr(output_paths, "_writable", lambda f: real(f) and Path(f) != locked)
        return locked / "out"


def particles_edit(column, row, value):
    def edit(blocks):
        frame = blocks["particles"]
        if frame[column].dtype != object and isinstance(value, str):
            frame[column] = frame[column].astype(object)
        frame.loc[row - 1, column] = value

    return edit


def optics_edit(column, value):
    def edit(blocks):
        blocks["optics"][column] = value

    return edit


def drop(column):
    def edit(blocks):
        blocks["particles"] = blocks["particles"].drop(columns=column)

    return edit


def duplicate_optics_group(blocks):
    blocks["optics"] = pd.concat([blocks["optics"], blocks["optics"]], ignore_index=True)


def duplicate_column(blocks):
    frame = blocks["particles"]
    frame.insert(
        len(frame.columns), "rlnDefocusU", frame["rlnDefocusU"].to_numpy(), allow_duplicates=True
    )


def names_without_index(blocks):
    blocks["particles"]["rlnImageName"] = "particles.mrcs"


def smaller(blocks):
    blocks["particles"] = blocks["particles"].iloc[:300].reset_index(drop=True)


def bad_latents(case: Case, latents) -> Path:
    np.save(case.run / "latent_means.npy", latents)
    return case.run


def truncated_latents(case: Case) -> Path:
    path = case.run / "latent_means.npy"
    path.write_bytes(path.read_bytes()[:200])
    return case.run


def nan_in_row_4(case: Case) -> Path:
    latents = np.load(case.run / "latent_means.npy")
    latents[3, 1] = np.nan
    return bad_latents(case, latents)


# (id, build(case) -> (argv, culprits)). Culprits must all appear in the error line.
CASES = [
    # STAR content, through optimize-deformations
    (
        "optics group twice",
        lambda c: (
            c.od(star=c.star(duplicate_optics_group)),
            ["particles.star", "rlnOpticsGroup 1"],
        ),
    ),
    (
        "column twice",
        lambda c: (c.od(star=c.star(duplicate_column)), ["particles.star", "rlnDefocusU", "twice"]),
    ),
    (
        "image names without N@",
        lambda c: (c.od(star=c.star(names_without_index)), ["rlnImageName", "row 1", "400 images"]),
    ),
    (
        "negative defocus U",
        lambda c: (
            c.od(star=c.star(particles_edit("rlnDefocusU", 7, -5000.0))),
            ["rlnDefocusU", "row 7"],
        ),
    ),
    (
        "negative defocus V",
        lambda c: (
            c.od(star=c.star(particles_edit("rlnDefocusV", 9, -1.0))),
            ["rlnDefocusV", "row 9"],
        ),
    ),
    (
        "NaN in a column",
        lambda c: (
            c.od(star=c.star(particles_edit("rlnAngleTilt", 3, np.nan))),
            ["rlnAngleTilt", "row 3", "'nan'"],
        ),
    ),
    (
        "text in a number column",
        lambda c: (
            c.od(star=c.star(particles_edit("rlnAnglePsi", 2, "abc"))),
            ["rlnAnglePsi", "row 2", "abc"],
        ),
    ),
    (
        "no image names",
        lambda c: (c.od(star=c.star(drop("rlnImageName"))), ["particles.star", "rlnImageName"]),
    ),
    (
        "no defocus V",
        lambda c: (c.od(star=c.star(drop("rlnDefocusV"))), ["particles.star", "rlnDefocusV"]),
    ),
    (
        "no pose",
        lambda c: (c.od(star=c.star(drop("rlnAngleRot"))), ["particles.star", "rlnAngleRot"]),
    ),
    (
        "unknown optics group",
        lambda c: (
            c.od(star=c.star(particles_edit("rlnOpticsGroup", 4, 9))),
            ["rlnOpticsGroup 9", "row 4"],
        ),
    ),
    (
        "image past the stack end",
        lambda c: (
            c.od(star=c.star(particles_edit("rlnImageName", 5, "999@particles.mrcs"))),
            ["999@particles.mrcs", "row 5"],
        ),
    ),
    (
        "image number 0",
        lambda c: (
            c.od(star=c.star(particles_edit("rlnImageName", 6, "0@particles.mrcs"))),
            ["0@particles.mrcs", "row 6"],
        ),
    ),
    (
        "stack missing",
        lambda c: (
            c.od(star=c.star(particles_edit("rlnImageName", 1, "1@elsewhere.mrcs"))),
            ["elsewhere.mrcs"],
        ),
    ),
    (
        "stack truncated",
        lambda c: (c.od(star=c.star(stack="truncated")), ["particles.mrcs", "truncated"]),
    ),
    ("stack not MRC", lambda c: (c.od(star=c.star(stack="text")), ["particles.mrcs", "MRC"])),
    (
        "box disagrees with the stack",
        lambda c: (c.od(star=c.star(optics_edit("rlnImageSize", 64))), ["rlnImageSize 64"]),
    ),
    (
        "negative pixel size",
        lambda c: (
            c.od(star=c.star(optics_edit("rlnImagePixelSize", -2.5))),
            ["rlnImagePixelSize", "-2.5"],
        ),
    ),
    ("STAR missing", lambda c: (c.od(star=c.root / "none.star"), ["none.star"])),
    (
        "STAR not a STAR file",
        lambda c: (c.od(star=c.file("junk.star", "\x00\x01 loop_ _rln")), ["junk.star"]),
    ),
    # optimize-deformations options and maps
    ("device cuda", lambda c: (c.od(*NO_CUDA.split()), ["--device"])),
    ("device unknown", lambda c: (c.od("--device", "warp9"), ["--device", "warp9"])),
    (
        "a billion Gaussians",
        lambda c: (c.od("--n-gaussians", "1000000000", model=False), ["--n-gaussians 1000000000"]),
    ),
    ("odd box", lambda c: (c.od("--box", "31"), ["--box 31"])),
    ("zero epochs", lambda c: (c.od("--epochs", "0"), ["--epochs"])),
    (
        "negative positional frequencies",
        lambda c: (c.od("--positional-frequencies", "-1"), ["--positional-frequencies", "-1"]),
    ),
    (
        "validation fraction",
        lambda c: (c.od("--validation-fraction", "0.7"), ["--validation-fraction"]),
    ),
    ("zero threads", lambda c: (c.od("--threads", "0"), ["--threads"])),
    ("zero processes", lambda c: (c.od("--processes", "0"), ["--processes 0"])),
    (
        "two processes on an unknown device",
        lambda c: (c.od("--processes", "2", "--device", "warp9"), ["--device", "warp9"]),
    ),
    (
        "all-zero mask",
        lambda c: (
            c.od("--mask", str(c.map("zero_mask.mrc", np.zeros((32,) * 3)))),
            ["zero_mask.mrc", "mask"],
        ),
    ),
    (
        "consensus missing",
        lambda c: (
            c.od(model=False)[:4] + [str(c.root / "none.mrc")] + c.od(model=False)[5:],
            ["none.mrc"],
        ),
    ),
    (
        "mask not a cube",
        lambda c: (
            c.od("--mask", str(c.map("slab.mrc", np.ones((16, 32, 32))))),
            ["slab.mrc", "cube"],
        ),
    ),
    (
        "consensus not a cube",
        lambda c: (
            c.od(model=False)[:4]
            + [str(c.map("slab.mrc", np.ones((16, 32, 32))))]
            + c.od(model=False)[5:],
            ["slab.mrc", "cube"],
        ),
    ),
    (
        "output is a file",
        lambda c: (
            [*c.od()[: -len(QUICK) - 1], str(c.file("taken")), *QUICK],
            ["taken", "is a file"],
        ),
    ),
    (
        "output below a file",
        lambda c: (
            [*c.od()[: -len(QUICK) - 1], str(c.file("taken") / "run"), *QUICK],
            ["taken", "is a file"],
        ),
    ),
    (
        "output not writable",
        lambda c: (
            [*c.od()[: -len(QUICK) - 1], str(c.unwritable()), *QUICK],
            ["locked", "not writable"],
        ),
    ),
    # resuming a run with other data or options
    (
        "resume: other STAR of the same size",
        lambda c: (
            c.resume(star=c.star(particles_edit("rlnDefocusU", 1, 12345.0))),
            ["run.json", "particle file content"],
        ),
    ),
    (
        "resume: smaller STAR",
        lambda c: (c.resume(star=c.star(smaller)), ["run.json", "particle file content"]),
    ),
    (
        "resume: a mask it did not have",
        lambda c: (
            c.resume("--mask", str(c.map("ones.mrc", np.ones((32,) * 3)))),
            ["run.json", "mask"],
        ),
    ),
    (
        "resume: other consensus map",
        lambda c: (
            c.resume()[:4] + [str(c.map("other.mrc", np.ones((32,) * 3)))] + c.resume()[5:],
            ["run.json", "consensus map"],
        ),
    ),
    ("resume: other options", lambda c: (c.resume("--decoder-width", "8"), ["decoder_width"])),
    (
        "resume unfinished with other data",
        lambda c: (
            c.unfinished_run() and c.resume(star=c.star(smaller)),
            ["run.json", "particle file content"],
        ),
    ),
    # fit-consensus
    ("fit: device cuda", lambda c: (c.fc(*NO_CUDA.split()), ["--device"])),
    (
        "fit: a billion Gaussians",
        lambda c: (c.fc("--n-gaussians", "1000000000"), ["--n-gaussians 1000000000"]),
    ),
    (
        "fit: all-zero mask",
        lambda c: (
            c.fc("--mask", str(c.map("zero_mask.mrc", np.zeros((32,) * 3)))),
            ["zero_mask.mrc", "mask"],
        ),
    ),
    ("fit: zero steps", lambda c: (c.fc("--steps", "0"), ["--steps"])),
    (
        "fit: output is a file",
        lambda c: (c.fc()[:4] + [str(c.file("taken"))] + c.fc()[5:], ["taken", "is a file"]),
    ),
    (
        "fit: output below a file",
        lambda c: (c.fc()[:4] + [str(c.file("taken") / "x")] + c.fc()[5:], ["taken", "is a file"]),
    ),
    (
        "fit: output not writable",
        lambda c: (c.fc()[:4] + [str(c.unwritable())] + c.fc()[5:], ["locked", "not writable"]),
    ),
    # simulate
    ("simulate: voltage 0", lambda c: (c.simulate("--voltage", "0"), ["--voltage"])),
    (
        "simulate: amplitude contrast 2",
        lambda c: (c.simulate("--amplitude-contrast", "2"), ["--amplitude-contrast"]),
    ),
    ("simulate: negative Cs", lambda c: (c.simulate("--cs", "-1"), ["--cs"])),
    ("simulate: device cuda", lambda c: (c.simulate(*NO_CUDA.split()), ["--device"])),
    (
        "simulate: output is a file",
        lambda c: (c.simulate()[:-1] + [str(c.file("taken"))], ["taken", "is a file"]),
    ),
    # demo
    (
        "demo: a one-frame movie",
        lambda c: (
            ["demo", "--output-directory", str(c.out), "--headless", "--movie-frames", "1"],
            ["--movie-frames 1"],
        ),
    ),
    # decode
    ("decode: device cuda", lambda c: (c.decode(*NO_CUDA.split()), ["--device"])),
    (
        "decode: output is a file",
        lambda c: (c.decode()[:-1] + [str(c.file("taken"))], ["taken", "is a file"]),
    ),
    (
        "decode: unfinished run",
        lambda c: (c.decode(run=c.unfinished_run()), ["run", "not finished"]),
    ),
    (
        "decode: index past the end",
        lambda c: (
            [
                "decode",
                str(c.run),
                "--particles",
                str(c.file("p.txt", "400")),
                "--output-directory",
                str(c.out),
            ],
            ["400"],
        ),
    ),
    # explore
    (
        "explore: NaN in row 4",
        lambda c: (["explore", str(nan_in_row_4(c))], ["latent_means.npy", "row 4"]),
    ),
    (
        "explore: truncated latent means",
        lambda c: (["explore", str(truncated_latents(c))], ["latent_means.npy", "truncated"]),
    ),
    (
        "explore: fewer latent means than particles",
        lambda c: (
            ["explore", str(bad_latents(c, np.zeros((7, 6), np.float32)))],
            ["latent_means.npy", "400 particles"],
        ),
    ),
    (
        "explore: unfinished run",
        lambda c: (["explore", str(c.unfinished_run())], ["run", "not finished"]),
    ),
    # inverse and reconstruct
    (
        "inverse: RUN/inverse is a file",
        lambda c: (
            ["optimize-inverse-deformations", str(c.run_with_file("inverse"))],
            ["inverse", "is a file"],
        ),
    ),
    (
        "inverse: unfinished run",
        lambda c: (["optimize-inverse-deformations", str(c.unfinished_run())], ["not finished"]),
    ),
    (
        "inverse: no run folder",
        lambda c: (
            ["optimize-inverse-deformations", str(c.root / "none")],
            ["none", "folder not found"],
        ),
    ),
    (
        "reconstruct: RUN/reconstruction is a file",
        lambda c: (
            ["reconstruct", str(c.run_with_file("reconstruction"))],
            ["reconstruction", "is a file"],
        ),
    ),
    (
        "reconstruct: unfinished run",
        lambda c: (["reconstruct", str(c.unfinished_run()), "--no-deformations"], ["not finished"]),
    ),
    (
        "reconstruct: subset particle not in the run",
        lambda c: (
            [
                "reconstruct",
                str(c.run),
                "--subset",
                str(c.star(particles_edit("rlnImageName", 4, "000999@other.mrcs"))),
            ],
            ["particles.star", "000999@other.mrcs", "row 4", "not in the run"],
        ),
    ),
    (
        "reconstruct: subset file missing",
        lambda c: (
            ["reconstruct", str(c.run), "--subset", str(c.root / "none.star")],
            ["none.star", "not found"],
        ),
    ),
    (
        "reconstruct: --deformed without --subset",
        lambda c: (["reconstruct", str(c.run), "--deformed"], ["--deformed", "--subset"]),
    ),
    (
        "decode: a movie ChimeraX cannot write",
        lambda c: (c.decode("--chimerax-movie", "m.gif"), ["--chimerax-movie", "m.gif", ".mp4"]),
    ),
]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` with its size and modification time (links as links)."""
    found = {}
    for current, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(current) / name
            info = path.lstat()
            # a folder's own time changes when a lock file comes and goes: compare what is in it
            found[str(path.relative_to(root))] = (
                ("folder",)
                if path.is_dir() and not path.is_symlink()
                else (info.st_size, info.st_mtime_ns)
            )
    return found


@pytest.mark.parametrize("build", [build for _, build in CASES], ids=[name for name, _ in CASES])
def test_bad_input_is_one_error_line_and_nothing_is_written(
    build, simulated, finished_run, tmp_path, monkeypatch, capsys
):
    import torch

    if torch.cuda.is_available():
        monkeypatch.setitem(globals(), "NO_CUDA", "--device tpu:0")
    case = Case(tmp_path, simulated, finished_run, monkeypatch)
    argv, culprits = build(case)
    before = snapshot(tmp_path)
    capsys.readouterr()
    status = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in out + err
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (status, lines)
    for culprit in culprits:
        assert culprit in lines[0], (culprit, lines[0])
    assert "np.float64" not in lines[0]
    assert snapshot(tmp_path) == before


def test_the_corpus_is_large():
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    "stack, edit, problem",
    [
        ("truncated", None, "truncated"),
        ("text", None, "not a readable MRC file"),
        ("link", particles_edit("rlnImageName", 5, "999@particles.mrcs"), "past the end"),
        ("link", optics_edit("rlnImageSize", 64), "rlnImageSize 64"),
    ],
    ids=["truncated", "not MRC", "past its end", "other box"],
)
def test_info_reports_an_unusable_stack(
    stack, edit, problem, simulated, finished_run, tmp_path, monkeypatch, capsys
):
    star = Case(tmp_path, simulated, finished_run, monkeypatch).star(edit, stack=stack)
    assert main(["info", str(star)]) == 0
    out = capsys.readouterr().out
    assert "image stacks:    0 of 1 found and usable" in out
    unusable = [line for line in out.splitlines() if line.startswith("  unusable: ")]
    assert len(unusable) == 1 and problem in unusable[0] and "particles.mrcs" in unusable[0], out
