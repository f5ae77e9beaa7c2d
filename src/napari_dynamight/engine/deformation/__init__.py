"""Stage 3: two half-set VAEs that learn per-particle deformations (docs/deformations.md).

Entry points: ``run.optimize_deformations`` (train, a Progress generator), ``decode.DeformationRun``
(load a run, decode latent points), ``settings.DeformationSettings`` (every option). Nothing is
imported here, so reading the settings does not load torch.
"""
