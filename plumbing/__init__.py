"""What keeps runs safe and fast, out of the lessons' way: user-facing errors and atomic file writes (files.py),
checkpoints, --resume and per-epoch seeding (checkpointing.py), the GPU-resident data path (gpu_data.py), the
on-device EMA (ema.py), result records (records.py), and the upload page shared by app.py and an exported Hugging
Face Space (serving.py; space.py writes the Space, space_app.py is its app.py). The course modules at the
repository root use it; a student need not read it."""
