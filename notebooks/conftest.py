"""pytest --nbval-lax runs the notebooks in SMOKE mode: the kernels inherit this environment."""
import os

os.environ.setdefault("SMOKE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
