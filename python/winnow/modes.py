"""Module train/eval modes: an evaluation block that gives every module its own mode back, and
gradient checkpointing for a model that trains in eval mode."""
import contextlib

from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """model.eval() inside the block; on exit every module gets back its own mode. (model.train(x)
    would set one mode everywhere: a pretrained model inside a fresh wrapper is often eval inside
    and train outside, and the checkpointed layers below are flagged one by one.)"""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def checkpoint_in_eval_mode(model: nn.Module) -> int:
    """transformers checkpoints a layer only while that layer's `training` flag is set, but
    winnow's fine-tuning keeps models in eval mode (no dropout). Flags exactly the layers whose
    gradient checkpointing is on (not their submodules: dropout stays off); returns how many."""
    try:  # transformers >= 4.52: the checkpointed layers are of one class
        from transformers.modeling_layers import GradientCheckpointingLayer as layer_type
    except ImportError:
        layer_type = nn.Module
    layers = [m for m in model.modules()
              if isinstance(m, layer_type) and getattr(m, "gradient_checkpointing", False) is True]
    for m in layers:
        m.training = True
    return len(layers)
