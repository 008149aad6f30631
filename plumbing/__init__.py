"""What keeps runs safe and fast, out of the lessons' way: train.py's command line (cli.py), the
hardware's fastest settings (hardware.py), atomic file writes (files.py), checkpoints, --resume and
per-epoch seeding (checkpointing.py), the device-resident data path (gpu_data.py) and result records
(records.py). The lessons at the repository root use it; it imports none of them. A student need not
read it."""
