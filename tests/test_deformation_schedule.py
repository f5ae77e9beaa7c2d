"""The training schedule: warm-up, consensus-only epochs, reference updates, stopping rule,
alignment mask."""

import torch

from napari_dynamight.engine.deformation.schedule import (
    StopRule,
    count_inside,
    epoch_mode,
    is_reference_update,
    within_distance_mask,
)
from napari_dynamight.engine.deformation.settings import DeformationSettings


def test_paper_schedule_warmup_then_five_consensus_epochs_in_every_thirty():
    settings = DeformationSettings(warmup_epochs=3, consensus_period=30, consensus_epochs=5)
    modes = [epoch_mode(e, settings) for e in range(1, 70)]
    assert modes[:3] == ["warmup"] * 3
    assert modes[3:28] == ["full"] * 25 and modes[28:33] == ["consensus"] * 5
    assert modes[33:58] == ["full"] * 25 and modes[58:63] == ["consensus"] * 5
    assert "warmup" not in modes[3:]


def test_reference_is_replaced_after_every_tenth_network_epoch():
    settings = DeformationSettings(warmup_epochs=3, consensus_period=30, consensus_epochs=5)
    updates = [e for e in range(1, 80) if is_reference_update(e, settings)]
    # full epochs: 4..28 (25), 34..58 (25), 64..; the 10th, 20th, 30th, ... of them
    assert updates == [13, 23, 38, 48, 58, 73]


def test_stop_rule_counts_increases_in_both_halves():
    rule = StopRule(limit=2)
    for loss in (1.0, 1.1, 1.0, 1.2):  # two increases in half 1
        rule.record(0, loss)
    assert not rule.should_stop
    for loss in (1.0, 0.9, 1.0, 0.8):  # one increase in half 2
        rule.record(1, loss)
    assert not rule.should_stop
    rule.record(1, 0.85)
    assert rule.should_stop
    copy = StopRule(limit=2)
    copy.load_state_dict(rule.state_dict())
    assert copy.increases == [2, 2] and copy.previous == rule.previous


def test_alignment_mask_and_counting():
    positions = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    mask = within_distance_mask(positions, box=32, voxel_size_angstrom=1.0, radius_angstrom=6.0)
    assert (
        bool(mask[16, 16, 16])
        and bool(mask[16, 16, 16 + 10 + 5])
        and not bool(mask[16, 16, 16 - 7])
    )
    assert not bool(mask[16, 16 + 7, 16])
    deformed = torch.stack(
        [positions, positions + torch.tensor([0.0, 8.0, 0.0]), positions + 100.0]
    )
    assert count_inside(deformed, mask, 1.0).tolist() == [2, 0, 0]
