"""The torch-free base every layer may import: errors, presets, progress events (and the terminal bars
they feed), atomic file I/O, format constants, label metrics (edit Dice), the numpy half of input
preprocessing and the shared typed contracts.

Imports nothing of ours from above (no ``core``, ``data``, ``project``, ``backend``) and never torch,
Qt or napari (a test checks this), so ``core/`` and ``data/`` share it without copying code.
"""
