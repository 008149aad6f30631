"""Small helpers shared by the modules: atomic file writes and the device's name."""

import io
import json
import os
import platform
import re
import tempfile
from pathlib import Path

import torch

# The permissions a plain open() would give (mkstemp makes its files private). Read once: os.umask
# can only be read by setting it, which is unsafe once other threads create files.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def atomic_write_bytes(path, data: bytes):
    """Write to a temporary file beside `path`, fsync, then rename: a crash leaves the old file or
    the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporary_files(folder):
    """Delete the temporary files of atomic writes that a killed process left behind in `folder`."""
    for path in Path(folder).glob(".*.tmp"):
        path.unlink(missing_ok=True)


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj, path):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_savefig(fig, path, dpi=120):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def describe_device(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({cpu_name()}, {os.cpu_count()} cores)"


def cpu_name():
    """'Intel Xeon Processor' from /proc/cpuinfo on Linux, else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return re.sub(r"\((R|TM)\)", "", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
