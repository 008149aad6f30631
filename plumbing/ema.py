"""An exponential moving average of the weights, kept on the training device and updated with foreach ops.

Lightning's EMAWeightAveraging (torch's AveragedModel) reads its update counter back to the host twice per step,
which stalls a GPU pipeline every step; this one keeps no device state the host has to read. Contract, as
EMAWeightAveraging's: parameters and floating-point buffers (BatchNorm statistics) are averaged, integer buffers
follow the model; validation runs on the average; last.ckpt holds the average as its state_dict and the current
weights under "current_model_state" (so a resumed run goes on exactly); when training ends the module holds the
average, so test, plots and the app see it.
"""
import pytorch_lightning as pl
import torch


class EMA(pl.Callback):
    """Average of the weights, updated after every `every`-th optimizer step: average += (1 - decay**every) *
    (weights - average), so `decay` is the per-step decay whatever `every` is. The first update copies the weights
    (as AveragedModel does); before it, the average is the starting weights."""

    def __init__(self, decay, every=1):
        if not 0 < decay < 1:
            raise ValueError(f"the EMA decay must lie between 0 and 1, got {decay}")
        if every < 1:
            raise ValueError(f"the EMA must be updated every 1 or more steps, got {every}")
        self.decay, self.every = decay, every
        self.updates = 0           # updates so far (a Python int: deciding what to do never waits for the device)
        self.average = None        # tensors matching `_tensors(pl_module)`, on the module's device
        self._loaded = None        # the average read from a checkpoint, adopted on first use

    @staticmethod
    def _tensors(pl_module):
        return list(pl_module.parameters()) + list(pl_module.buffers())

    @staticmethod
    def _names(pl_module):  # in the order of _tensors
        return [name for name, _ in pl_module.named_parameters()] + [name for name, _ in pl_module.named_buffers()]

    def _ensure(self, pl_module):
        current = self._tensors(pl_module)
        if self.average is None or self.average[0].device != current[0].device:
            source = self._loaded if self._loaded is not None else (self.average or current)
            # empty_like keeps each tensor's layout (channels_last weights stay so), which the foreach ops want
            self.average = [torch.empty_like(t).copy_(s.detach()) for t, s in zip(current, source)]
            self._loaded = None
        return current

    @torch.no_grad()
    def update(self, pl_module):
        current = self._ensure(pl_module)
        if self.updates == 0:
            torch._foreach_copy_(self.average, [t.detach() for t in current])
        else:
            floating = [(a, t.detach()) for a, t in zip(self.average, current) if t.is_floating_point()]
            torch._foreach_lerp_([a for a, _ in floating], [t for _, t in floating], 1 - self.decay ** self.every)
            integers = [(a, t) for a, t in zip(self.average, current) if not t.is_floating_point()]
            if integers:
                torch._foreach_copy_([a for a, _ in integers], [t for _, t in integers])
        self.updates += 1

    @torch.no_grad()
    def swap(self, pl_module):
        current = [t.data for t in self._ensure(pl_module)]
        kept = [t.clone() for t in current]
        torch._foreach_copy_(current, self.average)
        torch._foreach_copy_(self.average, kept)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:  # global_step: optimizer steps taken, 1 after the first
            self.update(pl_module)

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.state.fn == "fit":
            self.swap(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == "fit":
            self.swap(pl_module)

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module):
        current = [t.data for t in self._ensure(pl_module)]
        torch._foreach_copy_(current, self.average)

    def state_dict(self):
        return {"updates": self.updates, "decay": self.decay, "every": self.every}

    def load_state_dict(self, state_dict):
        self.updates = state_dict["updates"]

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn != "fit":
            return
        self._ensure(pl_module)
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {**checkpoint["state_dict"],
                                    **{name: average.detach().clone() for name, average in
                                       zip(self._names(pl_module), self.average)}}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # Lightning has already loaded "state_dict" (the average) into the module: keep that as the average and put
        # the current weights back.
        if "current_model_state" not in checkpoint:
            return
        self._loaded = [checkpoint["state_dict"][name] for name in self._names(pl_module)]
        self.average = None
        pl_module.load_state_dict(checkpoint["current_model_state"])
        if self.updates == 0:  # a checkpoint of Lightning's EMAWeightAveraging: it holds an average already
            self.updates = 1
