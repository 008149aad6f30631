"""What keeps runs safe and fast, out of the lessons' way: user-facing errors and atomic file writes (files.py),
checkpoints, --resume and per-epoch seeding (checkpointing.py), the GPU-resident data path (gpu_data.py), result
records (records.py), and the demo page (serving.py) with its export as a Hugging Face Space (space.py,
space_app.py). The course modules at the repository root use it; a student need not read it."""
