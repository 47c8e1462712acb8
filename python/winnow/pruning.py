"""Structured pruning with Torch-Pruning (PyPI `torch-pruning`): OBA's importance as a
`tp.importance.Importance`, and the iterative schedule (re-score, prune a step, repeat until a
FLOPs target).

    imp = OBAImportance(loss_fn, batches)
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=imp, global_pruning=True, ...)
    imp.refresh(model); pruner.step()

or `prune_iteratively(model, example_inputs, imp, flops_ratio=0.5, before_step=imp.refresh)`.
"""
from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function as tpf

from winnow.oba import CURVATURES, parameter_scores, structure_scores

_OUT = (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels, tpf.prune_depthwise_conv_out_channels)
_IN = (tpf.prune_conv_in_channels, tpf.prune_linear_in_channels, tpf.prune_depthwise_conv_in_channels)
_NORM_OUT = (tpf.prune_batchnorm_out_channels, tpf.prune_layernorm_out_channels, tpf.prune_groupnorm_out_channels)
_MHA = (tpf.prune_multihead_attention_out_channels,)


class OBAImportance(tp.importance.GroupMagnitudeImportance):
    """Channel importance |summed score of the channel's parameters| (winnow.oba: the second-order
    Taylor change of removing them, under `curvature`), reduced over a Torch-Pruning group
    (group_reduction) and normalised per group (normalizer), as Torch-Pruning's own importances
    are. "full" and "oba" sum every member of the group (the layer's output channel, its norm,
    the next layer's input channel); "self" and "fisher" score what removing the channel zeroes,
    which is the layers' output channels (a norm that directly follows included), so only those
    enter (a group's norm where no layer owns it). Call `refresh(model)` before each pruning step:
    the scores describe the model as it is then.

    The defaults, curvature "oba" (the paper's H minus Gauss-Newton) with the per-group "mean"
    normaliser, are the ones that kept the most accuracy of the OBA scores in the pruning study
    (README: the Fashion-MNIST CNN at 50/25/10% FLOPs, 2 dense models x 4 draws of the score
    batches), right after pruning and after fine-tuning; "full" is the authors' FastOBA score."""

    def __init__(self, loss_fn: Callable, batches: Iterable, curvature: str = "oba", first_order: bool = False,
                 group_reduction: str = "mean", normalizer: str = "mean"):
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        super().__init__(p=1, group_reduction=group_reduction, normalizer=normalizer)
        self.loss_fn, self.batches = loss_fn, list(batches)
        if not self.batches:
            raise ValueError("batches is empty")
        self.curvature, self.first_order = curvature, first_order
        self._by_module: dict[int, dict] | None = None

    def refresh(self, model: nn.Module) -> None:
        scores = parameter_scores(model, self.loss_fn, self.batches, curvature=self.curvature,
                                  first_order=self.first_order)
        sums = structure_scores(model, scores)
        self._by_module = {id(m): sums[name] for name, m in model.named_modules() if name in sums}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        if self._by_module is None:
            raise RuntimeError("OBAImportance: call refresh(model) before the pruner scores groups")
        imps, roots = [], []
        for key, handlers in self._members():
            for i, (dep, idxs) in enumerate(group):
                sums = self._by_module.get(id(dep.target.module))
                if sums is None or dep.handler not in handlers or key not in sums:
                    continue  # attention heads and other handlers: no per-channel sum here
                imps.append(sums[key][sorted(idxs)].abs())
                roots.append(group[i].root_idxs)
            if imps and self.curvature in ("self", "fisher"):
                break  # the layers' own channels found: norms only where no layer owns the channel
        if not imps:
            return None
        return self._normalize(self._reduce(imps, roots), self.normalizer)

    def _members(self):
        """(structure key, Torch-Pruning handlers) in the order they enter a group's score."""
        if self.curvature in ("self", "fisher"):
            return [("out", _OUT), ("out", _NORM_OUT)]
        return [("out", _OUT + _NORM_OUT), ("in", _IN)]


def flops_and_params(model: nn.Module, example_inputs) -> tuple[int, int]:
    return tp.utils.count_ops_and_params(model, example_inputs)


def prune_iteratively(model: nn.Module, example_inputs, importance, flops_ratio: float | None = None,
                      params_ratio: float | None = None, max_steps: int = 20,
                      before_step: Callable[[nn.Module], None] | None = None, ignored_layers=None,
                      max_pruning_ratio: float = 0.95) -> list[dict]:
    """Prune `model` in place, a step at a time (global threshold over normalised group scores),
    until its FLOPs are at most `flops_ratio` and its parameters at most `params_ratio` of what
    they were (give one or both); the last step stops at the first group that meets the target.
    `before_step(model)` runs before every step (re-score: OBAImportance.refresh, or a backward
    pass for Taylor). Returns the FLOPs / params fractions after each step."""
    for name, r in (("flops_ratio", flops_ratio), ("params_ratio", params_ratio)):
        if r is not None and not 0 < r < 1:
            raise ValueError(f"{name} must be in (0, 1), got {r}")
    if flops_ratio is None and params_ratio is None:
        raise ValueError("give flops_ratio, params_ratio or both")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    base_flops, base_params = flops_and_params(model, example_inputs)

    def met(flops, params):
        return (flops_ratio is None or flops <= flops_ratio * base_flops) and \
            (params_ratio is None or params <= params_ratio * base_params)

    pruner = tp.pruner.BasePruner(model, example_inputs, importance=importance, global_pruning=True,
                                  pruning_ratio=max_pruning_ratio, iterative_steps=max_steps,
                                  ignored_layers=ignored_layers or [])
    history = []
    for step in range(max_steps):
        if before_step is not None:
            before_step(model)
        for group in pruner.step(interactive=True):  # group by group: the last step stops at the target
            group.prune()
            flops, params = flops_and_params(model, example_inputs)
            if met(flops, params):
                break
        history.append({"step": step, "flops": flops / base_flops, "params": params / base_params})
        if met(flops, params):
            break
    return history
