"""The explorer on a real (tiny) deformation run: decoding through DeformationRun, half
comparison."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.explore import load_run
from napari_dynamight.engine.explore.run_decoder import open_decoder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """200 simulated AdK particles, 200 Gaussians, one epoch at box 32 (about 20 s)."""
    from napari_dynamight._sample import simulated_adk
    from napari_dynamight.engine.consensus_stage import fit_consensus
    from napari_dynamight.engine.deformation.run import optimize_deformations
    from napari_dynamight.engine.deformation.settings import DeformationSettings
    from napari_dynamight.engine.progress import run

    folder = tmp_path_factory.mktemp("explore_run")
    data = simulated_adk(folder / "data")
    fit = run(
        fit_consensus(data / "consensus.mrc", folder / "consensus", n_gaussians=200, n_steps=10)
    )
    settings = DeformationSettings(
        epochs=1, warmup_epochs=0, latent_dim=4, checkpoint_every=1, refinement_rounds=0
    )
    run(
        optimize_deformations(
            data / "particles.star",
            data / "consensus.mrc",
            folder / "run",
            settings=settings,
            consensus_model=fit.model_path,
            box=32,
        )
    )
    return folder / "run"


@pytest.mark.slow
def test_decode_matches_the_deformation_engine(tiny_run):
    from napari_dynamight.engine.deformation.decode import DeformationRun

    decoder = open_decoder(tiny_run)
    reference = DeformationRun.load(tiny_run)
    data = load_run(tiny_run)
    assert decoder.latent_dim == data.latents.shape[1] == 4
    particle = int(np.nonzero(reference.half_sets == 2)[0][0])
    for half in (1, 2):
        decoded = decoder.decode(data.latents[particle], half=half)
        latent = data.latents[particle]
        np.testing.assert_allclose(
            decoded.volume, reference.volume(latent, half).numpy(), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            decoded.positions_angstrom, reference.positions(latent, half)[0].numpy(), atol=1e-5
        )
        np.testing.assert_allclose(
            decoded.consensus_angstrom, reference.reference(half).positions_angstrom.numpy()
        )
    assert decoded.volume.shape == (64, 64, 64) and decoded.voxel_size_angstrom == pytest.approx(
        1.5
    )
    with pytest.raises(InputError, match="4 latent dimensions"):
        decoder.decode(np.zeros(3))


@pytest.mark.slow
def test_half_comparison_for_validation_particles(tiny_run):
    decoder = open_decoder(tiny_run)
    data = load_run(tiny_run)
    validation = np.nonzero(data.table.particles["dmValidation"].to_numpy() == 1)[0]
    np.testing.assert_array_equal(np.nonzero(decoder.validation)[0], validation)
    comparison = decoder.compare_halves(int(validation[0]))
    expected = np.linalg.norm(
        comparison.half1.displacements_angstrom - comparison.half2.displacements_angstrom, axis=1
    )
    np.testing.assert_allclose(comparison.difference_angstrom, expected)
    half2 = np.load(tiny_run / "latent_means_half2_validation.npy")[validation[0]]
    np.testing.assert_allclose(comparison.half2.latent, half2)
    training = int(np.nonzero(~decoder.validation)[0][0])
    with pytest.raises(InputError, match="not a validation particle"):
        decoder.compare_halves(training)


@pytest.mark.slow
def test_explorer_decodes_each_half_with_its_own_decoder(qtbot, make_napari_viewer, tiny_run):
    from napari_dynamight._widgets._explorer_validation import HALVES_LAYER
    from napari_dynamight._widgets.explorer import VOLUME_LAYER, open_explorer
    from napari_dynamight.engine.deformation.decode import DeformationRun

    viewer = make_napari_viewer(show=True)
    widget = open_explorer(viewer, tiny_run)
    reference = DeformationRun.load(tiny_run)

    def busy():
        return any(r is not None and r.busy for r in (widget.runner, widget.comparer))

    volumes = {}
    for half in (1, 2):
        widget.set_half(half)
        own = (reference.half_sets == half) | reference.validation
        np.testing.assert_array_equal(widget.view.rows, np.nonzero(own)[0])
        point = widget.embedding.coords[5]
        widget.decode_at(point)
        qtbot.waitUntil(lambda: not busy(), timeout=30_000)
        latent = widget.embedding.to_latent(point)
        volumes[half] = np.array(viewer.layers[VOLUME_LAYER].data)
        np.testing.assert_allclose(
            volumes[half], reference.volume(latent, half).numpy(), rtol=1e-5, atol=1e-6
        )
        other = reference.volume(latent, 3 - half).numpy()
        assert np.abs(volumes[half] - other).max() > 1e-3 * np.abs(other).max()
    half2 = np.load(tiny_run / "latent_means_half2_validation.npy")
    shown = reference.validation[widget.view.rows]
    np.testing.assert_array_equal(widget.view.latents[shown], half2[widget.view.rows[shown]])
    row = widget.compare_halves()
    qtbot.waitUntil(lambda: not busy(), timeout=30_000)
    assert reference.validation[row]
    np.testing.assert_allclose(
        viewer.layers[HALVES_LAYER].features["difference_angstrom"],
        widget.last_comparison.difference_angstrom,
    )
    np.testing.assert_allclose(
        viewer.layers[VOLUME_LAYER].data, widget.last_comparison.half2.volume
    )
    assert f"particle {row}" in widget.status.value
