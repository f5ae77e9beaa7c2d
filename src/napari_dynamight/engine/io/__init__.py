"""Readers and writers for the files cryo-EM users have: STAR, MRC, structures, trajectories."""
