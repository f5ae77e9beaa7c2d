"""napari sample data: a small simulated adenylate kinase data set (the demo's example data).

The first use simulates 200 particles (box 64, 1.5 Å/px, 13 frames of the closed-to-open
trajectory bundled with the package) into a folder in the temporary directory, in
about 5 s; later uses read it back. The layers are those of the readers: the consensus map in Å and
the particles' viewing directions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

SAMPLE_FOLDER = Path(tempfile.gettempdir()) / "napari-dynamight-sample-adk"


def simulated_adk(folder: Path = SAMPLE_FOLDER) -> Path:
    """The sample data set's folder, simulated on first use."""
    from .engine.example_data import EXAMPLE_STRUCTURE, EXAMPLE_TRAJECTORY, check_example_file
    from .engine.progress import run
    from .engine.simulate import simulate

    if not (folder / "particles.star").is_file():
        check_example_file(EXAMPLE_STRUCTURE, "--structure")
        run(
            simulate(
                EXAMPLE_STRUCTURE,
                EXAMPLE_TRAJECTORY,
                output_directory=folder,
                n_particles=200,
                box=64,
                pixel_size_angstrom=1.5,
                snr=0.1,
                frames=list(range(0, 98, 8)),
                seed=0,
            )
        )
    return folder


def adk_sample() -> list[tuple]:
    """Layers for napari's File > Open Sample: consensus map and viewing directions."""
    from ._reader import read_mrc, read_star

    folder = simulated_adk()
    [(volume, kwargs, kind)] = read_mrc(folder / "consensus.mrc")
    kwargs |= {"name": "AdK consensus map", "rendering": "iso", "opacity": 0.6}
    kwargs["iso_threshold"] = float(volume.max()) * 0.2
    return [(volume, kwargs, kind), *read_star(folder / "particles.star")]
