"""Two domains moving independently on a fixed CORE: the two-dimensional motion of simulations.

Every used trajectory frame is superposed onto the core frame on the CORE atoms (all atoms outside
both residue ranges; Kabsch, atomic-number weighted). State ``i·F + j`` of the F used frames takes
domain 1's atoms from used frame i, domain 2's from used frame j and the CORE from the core frame;
``engine.simulate`` draws the states, ``engine.evaluation.robustness`` computes their ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .io.dcd import read_dcd_info
from .io.structure import read_structure
from .scene import Scene, load_frames, scene_of


def _residue_range(value, name: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} {value!r} is invalid: give FIRST-LAST residue numbers") from None
    if low > high:
        raise InputError(
            f"{name} {low}-{high} is invalid: the first residue must not exceed the last"
        )
    return low, high


def _kabsch(mobile: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares superposition of ``mobile`` (n, 3) onto ``target`` (n, 3), no
    reflection.

    Returns a (5, 3) array: rows 0–2 the rotation R, row 3 the mobile centre c_m, row 4 the target
    centre c_t; a point x superposes to ``(x − c_m) @ R.T + c_t``.
    """
    w = weights / weights.sum()
    cm, ct = w @ mobile, w @ target
    h = ((mobile - cm) * w[:, None]).T @ (target - ct)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return np.vstack([rotation, cm, ct])


@dataclass
class DomainFrames:
    """Trajectory frames superposed on the CORE, for the two-dimensional (independent-domain)
    motion.

    ``aligned`` (F, n, 3) Å holds every used frame superposed onto the core frame on the CORE atoms,
    centred on the core frame's atomic-number-weighted centre; ``masks`` (2, n) select the two
    domains. State ``i·F + j`` takes domain 1 from used frame i, domain 2 from used frame j and the
    CORE from the core frame.
    """

    atoms: object
    frames: np.ndarray
    aligned: np.ndarray
    core_positions: np.ndarray
    masks: np.ndarray
    core_frame: int
    domains: tuple[tuple[int, int], tuple[int, int]]

    def state_frames(self, states) -> np.ndarray:
        """(S, 2) trajectory frames of domains 1 and 2 of each state."""
        states = np.asarray(states, dtype=np.int64)
        return np.stack(
            [self.frames[states // len(self.frames)], self.frames[states % len(self.frames)]], 1
        )

    def positions(self, states) -> np.ndarray:
        """(S, n, 3) Å composite positions of the given states."""
        states = np.asarray(states, dtype=np.int64)
        out = np.repeat(self.core_positions[None], len(states), axis=0)
        first, second = states // len(self.frames), states % len(self.frames)
        out[:, self.masks[0]] = self.aligned[first][:, self.masks[0]]
        out[:, self.masks[1]] = self.aligned[second][:, self.masks[1]]
        return out

    def scene(self, states, box: int, pixel_size: float, sigma: float | None, device) -> Scene:
        """A :class:`Scene` whose 'frames' are the given state numbers (sorted, unique)."""
        states = np.unique(np.asarray(states, dtype=np.int64))
        return scene_of(self.atoms, states, self.positions(states), box, pixel_size, sigma, device)


def domain_frames(
    structure,
    trajectory,
    frames,
    domains,
    core_frame: int | None = None,
    include_hydrogens: bool = False,
) -> DomainFrames:
    """The used frames superposed on the CORE for an independent-domain simulation (checks
    inputs)."""
    if trajectory is None:
        raise InputError("independent domains need a trajectory: give --trajectory")
    if domains is None or len(domains) != 2:
        raise InputError("independent domains: give exactly two residue ranges")
    ranges = tuple(_residue_range(r, f"domain {k + 1} residues") for k, r in enumerate(domains))
    atoms = read_structure(structure, drop_waters=True, drop_hydrogens=not include_hydrogens)
    residues = atoms.residue_numbers
    masks = np.stack([(residues >= lo) & (residues <= hi) for lo, hi in ranges])
    for k, (lo, hi) in enumerate(ranges):
        if not masks[k].any():
            raise InputError(
                f"domain {k + 1} residues {lo}-{hi} select no atom of {atoms.path} (residues "
                f"{residues.min()}-{residues.max()})"
            )
    if (masks[0] & masks[1]).any():
        raise InputError(
            f"domain residue ranges {ranges[0]} and {ranges[1]} overlap; give disjoint ranges"
        )
    core = ~(masks[0] | masks[1])
    if core.sum() < 3:
        raise InputError("the two domains leave fewer than 3 CORE atoms to superpose on")
    n_frames = read_dcd_info(trajectory).n_frames
    used = np.arange(n_frames) if frames is None else np.unique(np.asarray(frames, dtype=np.int64))
    core_frame = int(used[0]) if core_frame is None and len(used) else core_frame
    if core_frame is None or int(core_frame) != core_frame or not 0 <= core_frame < n_frames:
        raise InputError(f"core frame {core_frame} is invalid: give a frame in 0..{n_frames - 1}")
    if len(used) and used.max() >= n_frames:
        raise InputError(f"frames up to {used.max()} asked for but the trajectory has {n_frames}")
    wanted = np.union1d(used, [int(core_frame)])
    _, xyz, _ = load_frames(atoms, trajectory, wanted)
    target = xyz[np.searchsorted(wanted, int(core_frame))]
    weights = atoms.atomic_numbers.astype(np.float64)
    centre = (target * weights[:, None]).sum(0) / weights.sum()
    aligned = np.empty((len(used), atoms.n_atoms, 3))
    for k, f in enumerate(used):
        mobile = xyz[np.searchsorted(wanted, f)]
        fit = _kabsch(mobile[core], target[core], weights[core])
        aligned[k] = (mobile - fit[3]) @ fit[:3].T + fit[4] - centre
    return DomainFrames(atoms, used, aligned, target - centre, masks, int(core_frame), ranges)
