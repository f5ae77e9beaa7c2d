"""The one movie writer (engine.io.movie): frames cropped to what they show, GIF and MP4 read
back."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.io.movie import content_box, crop_to_content, write_image, write_movie


def moving_square(n: int = 5, height: int = 120, width: int = 200) -> list[np.ndarray]:
    """RGB frames on black: a 20×20 grey square moving right by 10 px per frame from (40, 50)."""
    frames = []
    for k in range(n):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[40:60, 50 + 10 * k : 70 + 10 * k] = 200
        frames.append(frame)
    return frames


def test_crop_to_content_is_the_union_of_every_frames_drawing_with_a_margin():
    frames = moving_square()
    assert content_box(frames, margin=5) == (slice(35, 65), slice(45, 115))
    cropped = crop_to_content(frames, margin=5)
    assert {frame.shape for frame in cropped} == {(30, 70, 3)}
    assert cropped[0][5:25, 5:25].min() == 200 and cropped[-1][5:25, 45:65].min() == 200
    blank = [np.zeros((10, 12, 3), np.uint8)]
    assert crop_to_content(blank)[0].shape == (10, 12, 3)  # nothing drawn: the whole frame


def test_gif_and_mp4_hold_the_frames(tmp_path):
    frames = crop_to_content(moving_square(), margin=5)
    assert write_movie(tmp_path / "m.gif", frames, fps=5) == 5
    gif = iio.imread(tmp_path / "m.gif")
    assert gif.shape[:3] == (5, 30, 70)
    np.testing.assert_allclose(gif[..., :3].astype(int), np.stack(frames), atol=2)
    write_movie(tmp_path / "m.mp4", frames, fps=5)
    mp4 = iio.imread(tmp_path / "m.mp4", plugin="FFMPEG")
    assert mp4.shape == (5, 32, 80, 3)  # grown to multiples of 16 with background, nothing cut
    assert np.abs(mp4[:, :30, :70].astype(int) - np.stack(frames)).mean() < 8
    grey = [frame[..., 0] for frame in frames]  # (H, W) frames are written as grey RGB
    write_movie(tmp_path / "grey.gif", grey)
    assert iio.imread(tmp_path / "grey.gif").shape[:3] == (5, 30, 70)
    write_image(tmp_path / "one.png", frames[0])
    np.testing.assert_array_equal(iio.imread(tmp_path / "one.png"), frames[0])


def test_a_movie_needs_a_movie_name_and_frames(tmp_path):
    with pytest.raises(InputError, match="choose a .gif or .mp4"):
        write_movie(tmp_path / "m.avi", moving_square())
    with pytest.raises(InputError, match="no frames"):
        write_movie(tmp_path / "m.gif", [])
    assert not list(tmp_path.iterdir())
