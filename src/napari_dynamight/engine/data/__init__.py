"""Particle tables and batched datasets built from RELION STAR files."""
