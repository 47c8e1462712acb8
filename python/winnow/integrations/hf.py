"""transformers Trainer callbacks for winnow's methods."""
from transformers import TrainerCallback

from winnow.adalora.allocator import peft_adalora_tuner
from winnow.adalora.schedule import check_schedule


class AdaLoRACallback(TrainerCallback):
    """Calls `update_and_allocate(step)` after every optimizer step (`on_optimizer_step`), with the
    optimizer-step count, so gradient accumulation is handled; takes total_step from the Trainer.

    `target` is a winnow `AdaLoRA` or a peft AdaLoRA model (its base_model.update_and_allocate is
    called, the call peft's Trainer users must otherwise remember to make).
    """

    def __init__(self, target):
        if hasattr(target, "update_and_allocate") and hasattr(target, "config"):
            self._update, self._config = target.update_and_allocate, target.config  # winnow AdaLoRA
        else:
            tuner = peft_adalora_tuner(target, "AdaLoRACallback (or a winnow AdaLoRA)")
            self._update = tuner.update_and_allocate
            self._config = tuner.peft_config[tuner.trainable_adapter_name]
        self.steps_seen: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):
        c = self._config
        if state.max_steps and state.max_steps > 0 and c.total_step != state.max_steps:
            c.total_step = state.max_steps
        init = getattr(c, "init_r", 1)
        check_schedule(init, min(getattr(c, "target_r", 0), init), c.tinit, c.tfinal, c.total_step)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._update(state.global_step)
        self.steps_seen.append(state.global_step)


class ISTCallback(TrainerCallback):
    """Runs an `ISTController` inside a transformers Trainer: layers are re-sampled at the start of
    every optimizer step (`on_step_begin` fires once per gradient-accumulation window), probes use
    `probe_loader` (ideally held out; `probe_batches` batches averaged per probe).
    """

    def __init__(self, controller, probe_loader=None, probe_batches: int = 1):
        self.controller = controller
        self.probe_loader = probe_loader
        self.probe_batches = probe_batches
        self._probe_iter = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            self.controller.check_optimizer(optimizer, "the Trainer's optimizer")

    def _probe(self):
        import torch

        model = self.controller.model
        device = next(model.parameters()).device
        total = 0.0
        for _ in range(self.probe_batches):
            try:
                batch = next(self._probe_iter)
            except (StopIteration, TypeError):
                self._probe_iter = iter(self.probe_loader)
                batch = next(self._probe_iter)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            total += float(model(**batch).loss)
        return total / self.probe_batches

    def on_step_begin(self, args, state, control, **kwargs):
        self.controller.begin_step(state.global_step, probe=self._probe if self.probe_loader is not None else None)
