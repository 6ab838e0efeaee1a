#!/usr/bin/env python3
"""One DDP training step of an adapted model over NCCL (``tools/gpu_check.sh`` part 5).

Run under torchrun on CUDA devices; each rank trains the ``el`` method of a WavLM Base+
architecture (random weights) on its own random batch under bf16 autocast, and checks that the
gradients after the step agree across ranks (what DDP's all-reduce guarantees) and are finite.

Usage::

    torchrun --standalone --nproc_per_node=1 tools/nccl_step.py
"""

import os
import sys

import torch
import torch.distributed as dist

from elp.core.backbones import load_backbone
from elp.core.model import AdaptedSSL
from elp.runtime import leave_process_group


class _Step(torch.nn.Module):
    """Model + head + loss in one forward, so that DDP's forward (and its all-reduce) runs."""

    def __init__(self, model: AdaptedSSL, num_classes: int):
        super().__init__()
        self.model = model
        self.head = torch.nn.Linear(model.output_dim, num_classes)

    def forward(self, wavs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        feats, mask = self.model(wavs, torch.ones(wavs.shape[0], device=wavs.device))
        weights = mask[..., None].to(feats.dtype)
        logits = (self.head(feats) * weights).sum(1) / weights.sum(1)
        return torch.nn.functional.cross_entropy(logits.float(), labels)


def main() -> int:
    """Initialise NCCL, take one step, compare gradient checksums across ranks; 0 on success."""
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    torch.manual_seed(0)
    step = _Step(AdaptedSSL(load_backbone("wavlm_plus", pretrained=False), "el"), 4).to(device).train()
    ddp = torch.nn.parallel.DistributedDataParallel(step, device_ids=[device.index])
    generator = torch.Generator().manual_seed(rank)
    wavs = (0.1 * torch.randn(4, 48000, generator=generator)).to(device)
    labels = torch.randint(0, 4, (4,), generator=generator).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = ddp(wavs, labels)
    loss.backward()
    grads = [p.grad for p in ddp.parameters() if p.grad is not None]
    checksum = torch.stack([g.float().sum() for g in grads]).sum()
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    ok = bool(torch.isfinite(checksum)) and all(torch.allclose(g, gathered[0]) for g in gathered)
    print(f"rank {rank}/{world}: loss {loss.item():.4f}, {len(grads)} gradient tensors, checksum "
          f"{checksum.item():.6g}, {'agree' if ok else 'DISAGREE'} across ranks, backend {dist.get_backend()}")
    del ddp
    leave_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
