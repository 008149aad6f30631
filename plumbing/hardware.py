"""The fastest settings the machine gives for the same training: precision and memory layout.

They change speed, not what is learned (tools/bench.py measures the speed, results/ the accuracy of
both)."""

import torch

# On a CPU, 256 images per step train faster per image than the recipes' 512, and 128 is not clearly
# faster than 256 (results/bench_cpu_*_bf16.json: 2-core Xeon, bf16 + channels-last, pipeline
# images/s at 128 / 256 / 512: ResNet-9 341 / 378 / 301, ResNet-18 195 / 188 / 163).
CPU_BATCH_SIZE = 256


def cpu_computes_bf16():
    """True where the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), as torch reports it.
    There bf16 autocast runs about 2-3x faster than float32; elsewhere bf16 is emulated and slower
    than float32."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def fast_precision(cuda):
    """Mixed precision where the hardware computes it natively (bf16 on Ampere GPUs and later, as
    dawn.py trained in fp16 on a V100; bf16 on such CPUs), else float32."""
    if cuda:
        return "bf16-mixed" if torch.cuda.get_device_capability()[0] >= 8 else "16-mixed"
    return "bf16-mixed" if cpu_computes_bf16() else "32-true"


def fast_channels_last(cuda):
    """Channels-last (NHWC) memory layout, what cuDNN's and oneDNN's convolutions run fastest on."""
    return cuda or cpu_computes_bf16()
