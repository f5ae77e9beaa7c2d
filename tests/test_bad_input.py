"""Every bad input gives one clear InputError line naming the file and the column or value."""

from __future__ import annotations

import shutil

import mrcfile
import numpy as np
import pytest

from conftest import DATA, STAR_FILES, TRPV1_MAP, TRPV1_STACK, edit_star, write_trpv1_star
from napari_dynamight.engine.data.dataset import ParticleDataset
from napari_dynamight.engine.data.particle_file import read_particles, write_particles
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.io import star as star_module
from napari_dynamight.engine.io.mrc import open_stack, read_map, write_map


def raises(match: str, *names: str):
    """pytest.raises(InputError), also checking the message is one line naming all ``names``."""

    class Check:
        def __enter__(self):
            self.context = pytest.raises(InputError, match=match)
            self.info = self.context.__enter__()
            return self.info

        def __exit__(self, *exc):
            result = self.context.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message
            for name in names:
                assert name in message, (name, message)
            return result

    return Check()


def trpv1_copy(tmp_path, edit=None):
    """Corrected TRPV1 STAR + a real copy of its stack in ``tmp_path``, optionally edited."""
    shutil.copy(TRPV1_STACK, tmp_path / TRPV1_STACK.name)
    star = write_trpv1_star(tmp_path)
    if edit is not None:
        edit_star(star, star, edit)
    return star


def test_missing_star_file(tmp_path):
    with raises("not found", "nothing.star"):
        read_particles(tmp_path / "nothing.star")


def test_missing_stack_file(tmp_path):
    star = tmp_path / "relion31.star"
    shutil.copy(STAR_FILES["relion31"], star)  # without relion31.mrcs next to it
    table = read_particles(star)
    with raises("not found", "relion31.mrcs", "rlnImageName", "--data-root"):
        ParticleDataset(table)


def test_missing_image_name_column(tmp_path):
    def drop(blocks):
        blocks["particles"] = blocks["particles"].drop(columns="rlnImageName")

    star = edit_star(STAR_FILES["relion31"], tmp_path / "noname.star", drop)
    with raises("missing required column", "noname.star", "rlnImageName"):
        read_particles(star)


def test_missing_ctf_column_is_named():
    table = read_particles(STAR_FILES["pfcrt_relion30"])
    with raises(
        "missing CTF", "FinalRefinement-OriginalParticles-PfCRT.star", "rlnAmplitudeContrast"
    ):
        table.require_ctf()


def test_missing_ctf_column_stops_the_dataset(tmp_path):
    def drop(blocks):
        blocks["particles"] = blocks["particles"].drop(columns="rlnDefocusV")

    table = read_particles(trpv1_copy(tmp_path, drop))
    with raises("missing CTF", "trpv1.star", "rlnDefocusV"):
        ParticleDataset(table)
    assert len(ParticleDataset(table, require_ctf=False)) == 10


def test_unknown_optics_group(tmp_path):
    def regroup(blocks):
        blocks["particles"].loc[3, "rlnOpticsGroup"] = 9

    with raises("not in data_optics", "trpv1.star", "rlnOpticsGroup 9", "row 4", "groups 7"):
        read_particles(trpv1_copy(tmp_path, regroup))


def test_image_index_past_the_end_of_the_stack(tmp_path):
    def overrun(blocks):
        blocks["particles"].loc[9, "rlnImageName"] = "000011@trpv1_small_stack.mrcs"

    table = read_particles(trpv1_copy(tmp_path, overrun))
    with raises(
        "past the end", "000011@trpv1_small_stack.mrcs", "10 images", "trpv1_small_stack.mrcs"
    ):
        ParticleDataset(table)
    with (
        open_stack(TRPV1_STACK) as stack,
        raises("past the end", "image 11", "trpv1_small_stack.mrcs"),
    ):
        stack[[10]]


def test_malformed_image_name(tmp_path):
    def garble(blocks):
        blocks["particles"].loc[2, "rlnImageName"] = "three@trpv1_small_stack.mrcs"

    with raises("rlnImageName", "three@trpv1_small_stack.mrcs", "row 3", "trpv1.star"):
        read_particles(trpv1_copy(tmp_path, garble))


def test_box_disagrees_between_star_and_stack(tmp_path):
    def resize(blocks):
        blocks["optics"]["rlnImageSize"] = 64

    table = read_particles(trpv1_copy(tmp_path, resize))
    with raises("disagrees", "rlnImageSize 64", "trpv1_small_stack.mrcs", "48×48"):
        ParticleDataset(table)


def test_pixel_size_disagrees_between_particles_and_map(trpv1_star):
    dataset = ParticleDataset(read_particles(trpv1_star))
    with raises("does not match", "trpv1_volume.mrc", "4.88"):
        dataset.check_map((48, 48, 48), 1.0, "trpv1_volume.mrc")


def test_missing_pixel_size(tmp_path):
    shutil.copy(DATA / "aspire_relion_proj" / "rln_proj_65.mrcs", tmp_path)
    star = shutil.copy(STAR_FILES["aspire65"], tmp_path)
    with raises("no pixel size", "rln_proj_65.star", "rlnImagePixelSize"):
        ParticleDataset(read_particles(star), require_ctf=False)


def test_non_finite_pixels(tmp_path):
    star = trpv1_copy(tmp_path)
    with mrcfile.open(tmp_path / TRPV1_STACK.name, mode="r+") as mrc:
        mrc.data[1, 5, 7] = np.nan
    dataset = ParticleDataset(read_particles(star))
    dataset.batch([0])  # the clean image is fine
    with raises("non-finite", "trpv1_small_stack.mrcs", "image 2"):
        list(dataset.batches(4))


def test_truncated_mrc(tmp_path):
    star = trpv1_copy(tmp_path)
    stack = tmp_path / TRPV1_STACK.name
    stack.write_bytes(stack.read_bytes()[:-1000])
    with raises("truncated", "trpv1_small_stack.mrcs"):
        open_stack(stack)
    with raises("truncated", "trpv1_small_stack.mrcs"):
        ParticleDataset(read_particles(star))
    volume = tmp_path / "map.mrc"
    volume.write_bytes(TRPV1_MAP.read_bytes()[:5000])
    with raises("truncated", "map.mrc"):
        read_map(volume)


def test_not_an_mrc_or_star_file(tmp_path):
    (tmp_path / "junk.mrc").write_bytes(b"hello" * 10)
    with raises("MRC", "junk.mrc"):
        read_map(tmp_path / "junk.mrc")
    (tmp_path / "junk.star").write_text("data_\nloop_\n_rlnFoo #1\n1\n2\n")
    with raises("rlnImageName", "junk.star"):
        read_particles(tmp_path / "junk.star")


def test_empty_selection_writes_nothing(tmp_path):
    table = read_particles(STAR_FILES["relion31"])
    with raises("empty selection", "subset.star"):
        write_particles(tmp_path / "subset.star", table, np.zeros(len(table), dtype=bool))
    with raises("empty selection"):
        write_particles(tmp_path / "subset.star", table, [])
    with raises("empty selection", "relion31.star"):
        ParticleDataset(table, indices=[])
    assert list(tmp_path.iterdir()) == []


def test_failed_star_write_leaves_no_partial_file(tmp_path, monkeypatch):
    table = read_particles(STAR_FILES["relion31"])
    target = tmp_path / "out.star"

    def broken(self, text, **kwargs):
        with open(self, "w") as handle:
            handle.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(star_module.Path, "write_text", broken)
    with pytest.raises(OSError):
        write_particles(target, table)
    assert list(tmp_path.iterdir()) == []


def test_failed_map_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "map.mrc"
    write_map(target, np.ones((8, 8, 8)), 2.0)
    before = target.read_bytes()

    def broken(self, data):
        raise OSError("disk full")

    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "set_data", broken)
    with pytest.raises(OSError):
        write_map(target, np.zeros((8, 8, 8)), 2.0)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["map.mrc"]
    with raises("3D", "bad.mrc"):
        write_map(tmp_path / "bad.mrc", np.zeros((8, 8)), 1.0)
    assert not (tmp_path / "bad.mrc").exists()
