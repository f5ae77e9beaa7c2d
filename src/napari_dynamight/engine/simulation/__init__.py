"""The simulator's parts; its entry point and the description of the model are ``engine.simulate``.

particles.py      each particle's ground truth (frame, pose, origin, CTF, half set), STAR blocks
images.py         the images (``engine.image_formation`` plus noise) and the consensus map
ground_truth.py   the frame maps, labels and settings record; publishing the staging folder
"""
