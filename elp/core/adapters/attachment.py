"""What every kind of trainable part a method adds to (or opens in) a frozen backbone provides.

An *attachment* is one kind's instance on one model: the E-adapters of ``el``, the
L-adapters, the P-adapter's frames, LoRA's factors, the backbone's own trainable LayerNorms, ...
Each kind (a subclass of :class:`Attachment`) declares in one place

* its method options and their defaults (``options``; e.g. ``{"e_dim": 256}``),
* the :class:`elp.core.model.AdaptedSSL` attribute that holds its modules (``attribute``; the
  state-dict prefix of its tensors) or None when its tensors live inside the backbone,
* what it needs from the backbone's autograd (``backbone_grad``, ``grad_from_input``),

and implements how it attaches itself (:meth:`Attachment.attach`), which modules train
(:meth:`Attachment.trainable_modules`), what it hands to the backbone's forward
(:meth:`Attachment.backbone_inputs`), whether it reads the hidden states for the head
(:meth:`Attachment.read`), and how it applies itself per block of a routed batch
(:meth:`Attachment.route`; a kind without routing support is refused there).

Examples
--------
>>> class Scale(Attachment):
...     kind = "scale"
...     options = {"scale_init": 1.0}
>>> Scale.routable, Scale.options
(False, {'scale_init': 1.0})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from elp.core.backbones import SSLBackbone


class RoutingError(ValueError):
    """A model or an attachment that cannot join a routed batch."""


class RoutingContext:
    """What the kinds of a routed group share: the backbone view and the batch's layout.

    A routed batch is task-major: ``counts[t]`` samples of task t, then task t + 1's. Served,
    it holds every utterance once per task (equal blocks); in joint training each utterance
    once, as a sample of its own task (blocks of any size, empty ones included). ``route``
    [sum(counts)] is each sample's task index.

    Parameters
    ----------
    view
        The backbone view the group runs (kinds install their routed modules and hooks on it).
    num_tasks
        T, the number of models in the group.

    Examples
    --------
    >>> context = RoutingContext(None, 2)
    >>> context.start(torch.zeros(3, 5, 4))
    >>> context.route.tolist(), [b.shape[0] for b in context.blocks(torch.zeros(6, 1))]
    ([0, 0, 0, 1, 1, 1], [3, 3])
    >>> context.start(torch.zeros(3, 5, 4), counts=[1, 2])
    >>> context.route.tolist(), [b.shape[0] for b in context.blocks(torch.zeros(3, 1))]
    ([0, 1, 1], [1, 2])
    """

    def __init__(self, view: SSLBackbone, num_tasks: int):
        self.view = view
        self.num_tasks = num_tasks
        self.counts: list[int] = [0] * num_tasks
        self.route: torch.Tensor | None = None
        #: backbone keyword argument -> function of the per-task sample counts (LongTensor [T])
        #: giving its per-sample value
        self.inputs: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        #: tensors the routed modules refer to (the tasks' own tensors, never copies)
        self.tensors: list[torch.Tensor] = []

    def start(self, features: torch.Tensor, counts: list[int] | None = None) -> None:
        """Set the layout for one call.

        Without ``counts``, ``features`` [block, F, C] is one task's block and the batch holds
        it once per task; with ``counts`` (T numbers), ``features`` [sum(counts), F, C] is the
        whole batch.

        Raises
        ------
        RoutingError
            If ``counts`` has not T entries or does not add up to the batch.
        """
        if counts is None:
            counts = [features.shape[0]] * self.num_tasks
        else:
            counts = [int(c) for c in counts]
            if len(counts) != self.num_tasks or sum(counts) != features.shape[0] or min(counts) < 0:
                raise RoutingError(f"counts {counts} do not lay out a batch of {features.shape[0]} samples "
                                   f"over {self.num_tasks} tasks")
        self.counts = counts
        self.route = torch.arange(self.num_tasks, device=features.device).repeat_interleave(
            torch.tensor(counts, device=features.device))

    def count_tensor(self, device: torch.device | None = None) -> torch.Tensor:
        """The per-task sample counts of this call (LongTensor [T]), what the inputs are built from."""
        return torch.tensor(self.counts, device=device)

    def blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[sum(counts), ...] -> T tensors [counts[t], ...], one per task."""
        return x.split(self.counts, dim=0)

    def add_input(self, name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """A keyword argument of the backbone's forward built per call from the per-task counts [T]."""
        if name in self.inputs:
            raise RoutingError(f"two attachment kinds of a routed group both set the backbone input {name!r}")
        self.inputs[name] = make


class Attachment:
    """Base of every attachment kind (see the module docstring).

    Attributes
    ----------
    options
        Method option -> default, the one place the default is written.
    attribute
        :class:`elp.core.model.AdaptedSSL` attribute holding the kind's modules (None: its
        tensors live inside the backbone).
    backbone_grad
        Gradients must flow through the transformer (else the backbone can run without autograd).
    grad_from_input
        Gradients must flow through every layer, from the transformer's input (pseudo frames,
        LoRA, the whole encoder), so no layer can run without autograd.
    keeps_backbone_dropout
        The backbone's dropout stays on by default (the backbone itself trains).
    routable
        :meth:`route` is implemented.
    """

    kind: ClassVar[str] = ""
    options: ClassVar[Mapping[str, object]] = {}
    attribute: ClassVar[str | None] = None
    backbone_grad: ClassVar[bool] = False
    grad_from_input: ClassVar[bool] = False
    keeps_backbone_dropout: ClassVar[bool] = False
    routable: ClassVar[bool] = False

    @classmethod
    def attach(cls, backbone: SSLBackbone, options: Mapping[str, object], **settings) -> Attachment:
        """Build the kind's modules for ``backbone`` (hooks, parametrizations) and return them.

        ``options`` holds every option of the model (the kind reads its own, ``activation``
        and ``e_first_layer``); ``settings`` are the method's per-kind settings
        (:class:`elp.core.methods.Attach`).
        """
        raise NotImplementedError(f"attachment kind {cls.kind!r} does not implement attach()")

    def trainable_modules(self) -> list[nn.Module]:
        """The modules whose parameters train (:class:`elp.core.model.AdaptedSSL` sets
        ``requires_grad`` from these, in one place)."""
        return [self] if isinstance(self, nn.Module) else []

    def backbone_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of :meth:`elp.core.backbones.SSLBackbone.forward` (e.g. ``prompt``)."""
        return {}

    #: whether :meth:`read` turns the hidden states into the head's input
    reads_hidden_states: ClassVar[bool] = False

    def read(self, hidden_states: list[torch.Tensor], last_hidden_state: torch.Tensor) -> torch.Tensor:
        """``num_layers + 1`` hidden states [B, F, D] -> the head's input [B, F, D']."""
        raise NotImplementedError(f"attachment kind {self.kind!r} does not read hidden states")

    @property
    def output_dim(self) -> int | None:
        """Width of what :meth:`read` returns (None: the kind does not read)."""
        return None

    def route_key(self) -> tuple:
        """What models of one routed group must agree on (e.g. a number of pseudo frames)."""
        return ()

    @classmethod
    def route(cls, members: list[Attachment | None], context: RoutingContext) -> None:
        """Apply each member to its own task's block of a routed batch on ``context.view``.

        ``members`` has one entry per model of the group: its attachment of this kind, or None.

        Raises
        ------
        RoutingError
            For a kind without routing support (its models never run without it).
        """
        raise RoutingError(f"attachment kind {cls.kind!r} cannot be routed; run its model on its own")


def block_hook(context: RoutingContext, per_task: list[Callable[[torch.Tensor], torch.Tensor] | None]):
    """A forward hook applying ``per_task[t]`` to task t's block of a module's output.

    The output may be a tensor or a tuple whose first element is the tensor (attention blocks);
    a None entry leaves its task's block as it is.

    Examples
    --------
    >>> context = RoutingContext(None, 2)
    >>> context.start(torch.zeros(1, 1, 1))
    >>> linear = nn.Identity()
    >>> _ = linear.register_forward_hook(block_hook(context, [None, lambda x: x + 1]))
    >>> linear(torch.zeros(2, 1)).flatten().tolist()
    [0.0, 1.0]
    """

    def hook(module, inputs, output):
        first = output[0] if isinstance(output, tuple) else output
        routed = torch.cat([f(b) if f is not None else b for f, b in zip(per_task, context.blocks(first))], dim=0)
        return (routed,) + tuple(output[1:]) if isinstance(output, tuple) else routed

    return hook
