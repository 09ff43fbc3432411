"""Pure torch/numpy/MONAI engine: networks, diffusion teacher, twin students, training loops.

Never imports napari, Qt, magicgui or FastAPI (a test checks this).
"""
