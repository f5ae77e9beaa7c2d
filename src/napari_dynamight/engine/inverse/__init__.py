"""Stage 4: inverse deformations, per half set a network mapping deformed positions back to the
consensus.

``run.optimize_inverse_deformations`` trains them from a finished deformation run;
``field.load_inverse_field`` loads one for the deformed backprojection. See docs/inverse.md.
"""
