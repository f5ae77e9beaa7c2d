"""The training image cache: rows are kept from their second use, within the byte budget, and a
batch is the same whether its rows come from the cache, from the stack, or from both."""

from __future__ import annotations

import numpy as np
import torch

from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.deformation.batches import ParticleBatches


def assert_same(batch, expected) -> None:
    assert np.array_equal(batch.rows, expected.rows)
    for key, value in expected.tensors().items():
        assert torch.equal(getattr(batch, key), value), key


def test_rows_are_kept_from_their_second_use(simulated):
    table = read_particles(simulated.star)
    reference = ParticleBatches(table, 32, max_cache_bytes=0)
    batches = ParticleBatches(table, 32)
    first, second = np.array([5, 1, 9, 2]), np.array([9, 3, 1, 7, 5])
    assert_same(batches.get(first), reference.get(first))
    assert batches.cached_rows == 0  # asked for once: not kept
    assert_same(batches.get(second), reference.get(second))  # 9, 1, 5 again: kept now
    assert sorted(np.nonzero(batches._slot >= 0)[0]) == [1, 5, 9]
    mixed = np.array([3, 5, 0, 9])  # 5 and 9 from the cache, 3 kept now, 0 prepared
    assert_same(batches.get(mixed), reference.get(mixed))
    assert sorted(np.nonzero(batches._slot >= 0)[0]) == [1, 3, 5, 9]
    assert_same(batches.get(np.array([9, 5])), reference.get(np.array([9, 5])))
    assert batches.cache_bytes == 4 * batches.bytes_per_particle
    assert reference.cached_rows == 0
    batches.close()
    reference.close()


def test_the_cache_stays_within_its_budget(simulated):
    table = read_particles(simulated.star)
    probe = ParticleBatches(table, 32)
    budget = 3 * probe.bytes_per_particle + 1
    probe.close()
    batches = ParticleBatches(table, 32, max_cache_bytes=budget)
    reference = ParticleBatches(table, 32, max_cache_bytes=0)
    rows = np.arange(8)
    batches.get(rows)
    assert_same(batches.get(rows), reference.get(rows))
    assert batches.cached_rows == 3
    assert sorted(np.nonzero(batches._slot >= 0)[0]) == [0, 1, 2]
    assert_same(batches.get(rows[::-1]), reference.get(rows[::-1]))
    batches.close()
    reference.close()


def test_a_selection_of_a_batch_is_the_batch_of_the_selected_rows(simulated):
    batches = ParticleBatches(read_particles(simulated.star), 32, max_cache_bytes=0)
    rows = np.array([7, 2, 11, 4, 0])
    batch = batches.get(rows)
    mask = torch.tensor([True, False, True, True, False])
    assert_same(batch.select(mask), batches.get(rows[mask.numpy()]))
    assert_same(batch.select(slice(1, 3)), batches.get(rows[1:3]))
    pose = batch.pose.select(torch.tensor([4, 0]))
    assert torch.equal(pose.rotations, batches.get(rows[[4, 0]]).rotations)
    assert torch.equal(pose.origin_angstrom, batches.get(rows[[4, 0]]).origin_angstrom)
    batches.close()
