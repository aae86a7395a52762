"""Channel-dependency tracing: run the model once on an example input and record, for every channel of
every tensor, which prunable *element* it is (output channel ``i`` of convolution ``c``).

Mechanism (one forward pass, no source analysis, so any forward code works, DenseNet's lists of
tensors and MobileNet's loops included):

* the layers that own or slice channels (``Conv2d``, ``BatchNorm2d``, ``Linear``, pooling; ours and
  torch's, ours subclass torch's) are leaves: forward hooks see their inputs, the ``residual=`` keyword
  of our fused Conv2d / BatchNorm2d, and their output; what runs inside them is not looked at;
* everything else the forward does with tensors is seen by a ``TorchFunctionMode``: ``torch.cat``,
  ``+``, ``torch.flatten``, ``F.relu``, the ``pyimgcls.ops`` pooling custom ops, ...

Each tensor gets a *space*: a list of element ids, one per channel (dim 1). A plain convolution
creates a fresh space of its own elements; BatchNorm, activations, pooling and depthwise convolutions
keep their input's space (a depthwise conv is pruned with its producer); ``cat`` on dim 1 concatenates
spaces; an element-wise binary op (residual add, SE gate multiply) *ties* the two operands' elements
channel by channel (union-find), so tied channels are kept or removed together; ``flatten`` (or a
``view`` / ``reshape`` to [N, C*H*W]) makes a flat space of C channels x H*W features, which a
following Linear slices in blocks. An op with no rule freezes the elements of its inputs (never
removed: always correct, only less pruning), as do the model's input and outputs. A grouped
(non-depthwise) convolution keeps or removes whole groups (a group's input and output channels tied);
``nn.SqueezeExcitation`` is a leaf too (its one op gates x's channels; fc1's squeeze channels are an
inner group); ``pyimgcls::drop_path`` (stochastic depth, ``drop_path_add``) ties like a residual add.
A channel shuffle with g groups (ShuffleNetV2's ``channel_shuffle``, torch's ``channel_shuffle``) permutes
the space (output channel i*g + k is input channel k*n + i, n = C/g) and ties input channels k*n + i
over k: each group then keeps the same positions, so the pruned tensor still splits into g equal
groups and the pruned shuffle puts the kept channels in the original order. Inside a ShuffleNetV2
unit the split ``x[:, :c]`` / ``x[:, c:]`` (c = ``branch_features``) slices the space; no tie is needed,
because after pruning ``branch_features`` is set to the kept count of the first half (``_arch.sync_widths``:
the shuffle tie makes it the unit's branch output width). A channel slice anywhere else has no rule
(its bound is a constant of the model's code). Supporting a new family means at most adding a rule here."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

# Functions that keep each channel where it was (dim 1 unchanged in meaning). Names as
# ``func.__name__`` reports them for torch functions, Tensor methods and custom ops (``<op>.default``).
_SAME_CHANNELS = {
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "gelu",
    "hardswish", "hardsigmoid", "leaky_relu", "elu", "dropout", "dropout_", "dropout2d", "feature_dropout",
    "alpha_dropout", "contiguous", "clone", "to", "detach", "float", "half", "bfloat16", "neg", "abs",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d_with_indices",
    "interpolate", "upsample_nearest2d", "upsample_bilinear2d", "pad", "data",
}
# Reductions that keep the channel dim when they reduce only over dims >= 2 (a global mean pool).
_SPATIAL_REDUCE = {"mean", "sum", "amax", "amin"}
# Element-wise binary ops: their tensor operands' channels are tied.
_BINARY = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "mul", "mul_",
           "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "maximum", "minimum"}
# Calls that return no tensor or only read metadata.
_METADATA = {"dim", "size", "stride", "numel", "is_contiguous", "data_ptr", "__len__", "__bool__",
             "element_size", "is_floating_point", "get_device", "__format__", "__repr__", "__hash__", "__eq__",
             "requires_grad_", "__setstate__", "__reduce_ex__", "_is_view", "storage_offset", "dtype"}

CONV_TYPES = (torch.nn.Conv2d,)
NORM_TYPES = (torch.nn.BatchNorm2d,)
LINEAR_TYPES = (torch.nn.Linear,)
POOL_TYPES = (torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)


def _se_types() -> tuple:
    # imported late: pyimgcls.nn imports the ops package, which must not import pruning back
    from ..nn import SqueezeExcitation
    return (SqueezeExcitation,)


def func_name(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name.endswith(".default"):      # custom / aten op overloads: pyimgcls::avg_pool2d.default
        name = name[: -len(".default")]
    return name.split(".")[-1]


@dataclass
class Flat:
    """A flattened feature vector: feature ``c * hw + s`` comes from channel ``c`` of ``space``."""
    space: list
    hw: int


@dataclass
class Graph:
    """What the trace found. ``owner[e]`` = (conv name, output index) of element ``e``; ``frozen`` the
    elements that must stay; ``conv_in`` / ``conv_out`` / ``norm_in`` / ``linear_in``: the space each
    layer reads (or, for a conv, produces), by module name; ``depthwise`` the convs pruned with their
    input; ``out_space`` the space each leaf layer produced; ``bn_first[e]`` = (norm name, channel)
    of the first BatchNorm that saw element ``e``."""
    owner: list = field(default_factory=list)
    parent: list = field(default_factory=list)
    frozen: set = field(default_factory=set)
    conv_in: dict = field(default_factory=dict)
    conv_out: dict = field(default_factory=dict)
    depthwise: set = field(default_factory=set)
    norm_in: dict = field(default_factory=dict)
    linear_in: dict = field(default_factory=dict)
    bn_first: dict = field(default_factory=dict)
    out_space: dict = field(default_factory=dict)   # layer name -> the space of its (last) output
    se_squeeze: set = field(default_factory=set)    # SqueezeExcitation fc1 convs (no BN: ranked by L1)

    def new_elements(self, n: int, owner=None) -> list:
        start = len(self.owner)
        for i in range(n):
            self.owner.append(None if owner is None else (owner, i))
            self.parent.append(start + i)
        return list(range(start, start + n))

    def find(self, e: int) -> int:
        root = e
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[e] != root:        # path compression
            self.parent[e], e = root, self.parent[e]
        return root

    def tie(self, a: list, b: list) -> None:
        for x, y in zip(a, b):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    def freeze(self, space) -> None:
        if isinstance(space, Flat):
            space = space.space
        self.frozen.update(space)


class _Tracer(TorchFunctionMode):
    def __init__(self, graph: Graph):
        super().__init__()
        self.g = graph
        self.spaces: dict[int, object] = {}   # id(tensor) -> list (channel space) | Flat
        self.alive: list = []                 # keeps traced tensors alive so ids are not reused
        self.depth = 0                        # > 0 inside a leaf layer: its internals are not traced
        self.units: list = []                 # the ShuffleNetV2 units being run, innermost last
        self.se_types = _se_types()

    # ------------------------------------------------------------------------------ spaces
    def space(self, t: torch.Tensor):
        s = self.spaces.get(id(t))
        if s is None:
            # a tensor from outside the traced graph (the model input, a constant): its channels are fixed
            s = self.g.new_elements(t.shape[1] if t.dim() >= 2 else (t.shape[0] if t.dim() == 1 else 0))
            self.g.freeze(s)
            self.set(t, s)
        return s

    def set(self, t, s) -> None:
        if isinstance(t, torch.Tensor):
            self.spaces[id(t)] = s
            self.alive.append(t)

    def channel_space(self, t: torch.Tensor) -> list:
        s = self.space(t)
        if isinstance(s, Flat):              # a flat vector read as channels (Linear -> conv): features are channels
            s = self._unflatten(s)
        return s

    def _unflatten(self, s: Flat) -> list:
        if s.hw == 1:
            return s.space
        self.g.freeze(s)                     # one channel spread over hw features cannot be sliced per feature
        return self.g.new_elements(len(s.space) * s.hw)

    def fresh_frozen(self, out) -> None:
        for t in _tensors(out):
            if id(t) not in self.spaces and t.dim() >= 1:
                s = self.g.new_elements(t.shape[1] if t.dim() >= 2 else t.shape[0])
                self.g.freeze(s)
                self.set(t, s)

    # ---------------------------------------------------------------------------- torch functions
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth:
            return out
        name = func_name(func)
        if name in _METADATA or not any(True for _ in _tensors(out)):
            return out
        if name == "__get__":             # a tensor attribute: .data keeps the channels, others (.T, .mT) have no rule
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        inputs = [t for t in _tensors((args, kwargs)) if id(t) in self.spaces]
        if not inputs:
            return out
        try:
            handled = self._rule(name, args, kwargs, out)
        except _NoRule:
            handled = False
        if not handled:
            for t in inputs:
                self.g.freeze(self.spaces[id(t)])
            self.fresh_frozen(out)
        return out

    def _rule(self, name, args, kwargs, out) -> bool:
        if not isinstance(out, torch.Tensor):
            if name == "max_pool2d_with_indices" or (name in _SAME_CHANNELS and isinstance(out, tuple)):
                s = self.space(args[0])
                for t in _tensors(out):
                    self.set(t, s)
                return True
            if name in ("split", "chunk", "tensor_split", "unbind") and isinstance(out, (tuple, list)):
                return self._split(name, args, kwargs, out)
            raise _NoRule
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in _SAME_CHANNELS and x is not None and out.dim() == x.dim() and out.dim() >= 2 \
                and out.shape[1] == x.shape[1]:
            self.set(out, self.space(x))
            return True
        if name in _SPATIAL_REDUCE and x is not None and x.dim() >= 3:
            return self._reduce(x, args, kwargs, out)
        if name in _BINARY:
            return self._binary(args, out)
        if name in ("cat", "concat", "concatenate"):
            return self._cat(args, kwargs, out)
        if name == "drop_path":
            return self._drop_path(args, kwargs, out)
        if name in ("flatten", "view", "reshape") and x is not None:
            return self._flatten(x, out)
        if name in ("channel_shuffle", "native_channel_shuffle") and x is not None:
            groups = args[1] if len(args) > 1 else kwargs.get("groups")
            return self.shuffle(x, groups, out)
        if name == "__getitem__" and x is not None and self.units:
            return self._unit_split(x, args[1] if len(args) > 1 else None, out)
        raise _NoRule

    def shuffle(self, x, groups, out) -> bool:
        """Channel shuffle: out[:, i*g + k] = x[:, k*n + i] (n = C/g). The g channels {k*n + i : k} are
        tied, so every group keeps the same positions i and the pruned shuffle stays a shuffle of g equal
        groups that orders the kept channels as the original does."""
        if not isinstance(groups, int) or groups < 1 or x.dim() < 2 or out.shape != x.shape or x.shape[1] % groups:
            raise _NoRule
        s = self.space(x)
        if isinstance(s, Flat):
            raise _NoRule
        n = len(s) // groups
        for i in range(n):
            self.g.tie([s[i]] * (groups - 1), [s[k * n + i] for k in range(1, groups)])
        self.set(out, [s[k * n + i] for i in range(n) for k in range(groups)])
        return True

    def _unit_split(self, x, index, out) -> bool:
        """``x[:, :c]`` / ``x[:, c:]`` inside a ShuffleNetV2 unit, c = its ``branch_features`` (the one
        channel slice whose bound pruning rewrites, see the module docstring)."""
        c = self.units[-1].branch_features
        if not (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
                and index[1] in (slice(None, c), slice(c, None)) and x.dim() >= 2 and x.shape[1] == 2 * c):
            raise _NoRule
        s = self.space(x)
        if isinstance(s, Flat):
            raise _NoRule
        self.set(out, s[:c] if index[1] == slice(None, c) else s[c:])
        return True

    def _reduce(self, x, args, kwargs, out) -> bool:
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dims is None:
            raise _NoRule
        dims = [d % x.dim() for d in ((dims,) if isinstance(dims, int) else dims)]
        if min(dims) < 2 or out.dim() < 2 or out.shape[1] != x.shape[1]:
            raise _NoRule
        self.set(out, self.space(x))
        return True

    def _binary(self, args, out) -> bool:
        ts = [a for a in args[:2] if isinstance(a, torch.Tensor)]
        full = [t for t in ts if t.dim() == out.dim() and t.dim() >= 2 and t.shape[1] == out.shape[1]]
        if not full:
            raise _NoRule
        base = self.space(full[0])
        if isinstance(base, Flat):
            raise _NoRule
        for t in ts:
            if t is full[0]:
                continue
            if t.dim() >= 2 and t.dim() == out.dim() and t.shape[1] == out.shape[1]:
                other = self.space(t)
                if isinstance(other, Flat):
                    raise _NoRule
                self.g.tie(base, other)
            elif t.dim() >= 2 and t.dim() == out.dim() and t.shape[1] == 1 or t.dim() == 0:
                pass                          # broadcast over channels: no channel of its own to tie
            else:
                raise _NoRule
        self.set(out, base)
        return True

    def _drop_path(self, args, kwargs, out) -> bool:
        # pyimgcls::drop_path(x, scale, residual, ...): out[n] = x[n] * scale[n] (+ residual[n]); scale is
        # per sample, so each channel stays where it was and the residual add ties x's and residual's channels
        x = args[0]
        residual = args[2] if len(args) > 2 else kwargs.get("residual")
        if x.dim() < 2 or out.shape != x.shape:
            raise _NoRule
        s = self.space(x)
        if isinstance(s, Flat):
            raise _NoRule
        if isinstance(residual, torch.Tensor):
            r = self.space(residual)
            if isinstance(r, Flat) or residual.shape != x.shape:
                raise _NoRule
            self.g.tie(s, r)
        self.set(out, s)
        return True

    def _cat(self, args, kwargs, out) -> bool:
        ts = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        ts = list(ts)
        if not ts or out.dim() < 2:
            raise _NoRule
        if dim < 0:
            dim += out.dim()
        spaces = [self.space(t) for t in ts]
        if any(isinstance(s, Flat) for s in spaces):
            raise _NoRule
        if dim == 1:
            self.set(out, [e for s in spaces for e in s])
        else:                                 # concatenation along batch / space: channels line up
            for s in spaces[1:]:
                self.g.tie(spaces[0], s)
            self.set(out, spaces[0])
        return True

    def _flatten(self, x, out) -> bool:
        if x.dim() < 2 or out.dim() != 2 or out.shape[0] != x.shape[0] or out.numel() != x.numel():
            raise _NoRule
        s = self.space(x)
        if isinstance(s, Flat):
            raise _NoRule
        hw = 1
        for d in x.shape[2:]:
            hw *= d
        self.set(out, Flat(s, hw))
        return True

    def _split(self, name, args, kwargs, out) -> bool:
        x = args[0]
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        if name == "unbind" or dim not in (1, 1 - x.dim()):
            raise _NoRule
        s = self.space(x)
        if isinstance(s, Flat):
            raise _NoRule
        start = 0
        for t in out:
            self.set(t, s[start:start + t.shape[1]])
            start += t.shape[1]
        return True

    # --------------------------------------------------------------------------- ShuffleNetV2 units
    def unit_enter(self, module, args) -> None:
        self.units.append(module)

    def unit_exit(self, module, args, out) -> None:
        self.units.pop()

    # ------------------------------------------------------------------------------ leaf layers
    def pre_hook(self, module, args, kwargs):
        self.depth += 1

    def make_hook(self, name: str):
        def hook(module, args, kwargs, out):
            self.depth -= 1
            if self.depth:
                return None
            x = args[0] if args else kwargs.get("input")
            residual = kwargs.get("residual", args[1] if len(args) > 1 else None)
            if isinstance(module, CONV_TYPES):
                s = self._conv(name, module, x)
            elif isinstance(module, NORM_TYPES):
                s = self.channel_space(x)
                self._seen(self.g.norm_in, name, s)
                for j, e in enumerate(s):
                    self.g.bn_first.setdefault(e, (name, j))
            elif isinstance(module, LINEAR_TYPES):
                s = self._linear(name, module, x)
            elif isinstance(module, self.se_types):
                s = self._se(name, module, x)
            else:                              # pooling: channels unchanged
                s = self.channel_space(x)
            if residual is not None:
                self.g.tie(s, self.channel_space(residual))
            self.g.out_space[name] = s
            for t in _tensors(out):
                self.set(t, s)
            return None
        return hook

    def _seen(self, table: dict, name: str, s: list) -> None:
        # A layer called more than once must read the same channels each time: tie the calls' spaces.
        if name in table:
            self.g.tie(table[name], s)
        else:
            table[name] = s

    def _conv(self, name, m, x) -> list:
        s_in = self.channel_space(x)
        if m.groups == 1:
            self._seen(self.g.conv_in, name, s_in)
            if name not in self.g.conv_out:
                self.g.conv_out[name] = self.g.new_elements(m.out_channels, owner=name)
            return self.g.conv_out[name]
        if m.groups == m.in_channels == m.out_channels:
            # depthwise: output channel i filters input channel i only, so it is kept or removed with it
            self.g.depthwise.add(name)
            self._seen(self.g.conv_in, name, s_in)
            self.g.conv_out[name] = self.g.conv_in[name]
            return self.g.conv_in[name]
        # grouped (ResNeXt): group k reads input channels [k*cg, (k+1)*cg) and writes output channels
        # [k*og, (k+1)*og); a pruned conv must keep equal groups, so a whole group goes or stays: its cg
        # input and og output channels are tied into one class (ranked by their summed score)
        self._seen(self.g.conv_in, name, s_in)
        if name not in self.g.conv_out:
            self.g.conv_out[name] = self.g.new_elements(m.out_channels, owner=name)
        s_out = self.g.conv_out[name]
        cg, og = m.in_channels // m.groups, m.out_channels // m.groups
        for k in range(m.groups):
            members = s_in[k * cg:(k + 1) * cg] + s_out[k * og:(k + 1) * og]
            self.g.tie(members[:1] * (len(members) - 1), members[1:])
        return s_out

    def _se(self, name, m, x) -> list:
        """nn.SqueezeExcitation, one op: ``x * gate(fc2(act(fc1(mean_hw(x)))))``. fc1 reads x's channels
        and makes the squeeze channels (an inner group of its own, pruned by fc1's L1); fc2 reads those
        and makes one gate per channel of x, so its output channels are x's (sliced with x, like a
        depthwise conv with its input); the product keeps x's channels. fc1 / fc2 are never called as
        modules (the op takes their weights), so their spaces are recorded here."""
        s_in = self.channel_space(x)
        prefix = f"{name}." if name else ""
        fc1, fc2 = prefix + "fc1", prefix + "fc2"
        self._seen(self.g.conv_in, fc1, s_in)
        if fc1 not in self.g.conv_out:
            self.g.conv_out[fc1] = self.g.new_elements(m.fc1.out_channels, owner=fc1)
        self.g.se_squeeze.add(fc1)
        self._seen(self.g.conv_in, fc2, self.g.conv_out[fc1])
        self._seen(self.g.conv_out, fc2, s_in)
        return s_in

    def _linear(self, name, m, x) -> list:
        s = self.space(x)
        if x.dim() != 2:                     # a Linear over the last dim of an N-d tensor: not channels
            self.g.freeze(s)
            s = self.g.new_elements(x.shape[-1])
            self.g.freeze(s)
        if isinstance(s, list):
            s = Flat(s, 1)
        prev = self.g.linear_in.get(name)
        if prev is None:
            self.g.linear_in[name] = s
        elif prev.hw == s.hw:
            self.g.tie(prev.space, s.space)
        else:
            self.g.freeze(prev)
            self.g.freeze(s)
        # Linear outputs are not pruned (hidden Linear layers keep their width; a head is the output)
        out = self.g.new_elements(m.out_features)
        self.g.freeze(out)
        return out


class _NoRule(Exception):
    pass


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def trace(model: torch.nn.Module, example_input: torch.Tensor) -> Graph:
    """Run ``model`` once (eval mode, no grad) on ``example_input`` and return its channel graph."""
    g = Graph()
    tracer = _Tracer(g)
    handles = []
    leaf_types = CONV_TYPES + NORM_TYPES + LINEAR_TYPES + POOL_TYPES + tracer.se_types
    for name, m in model.named_modules():
        if isinstance(m, leaf_types):
            handles.append(m.register_forward_pre_hook(tracer.pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(tracer.make_hook(name), with_kwargs=True))
    from ..models import shufflenetv2     # late, as _se_types
    for m in model.modules():
        if isinstance(m, shufflenetv2.InvertedResidual):
            handles.append(m.register_forward_pre_hook(tracer.unit_enter))
            handles.append(m.register_forward_hook(tracer.unit_exit))
    plain_shuffle = shufflenetv2.channel_shuffle

    def traced_shuffle(x, groups):
        # a Python function of several tensor ops (empty_like, unflatten, copy_): run it untraced, then
        # apply the shuffle rule to its input and output
        tracer.depth += 1
        try:
            out = plain_shuffle(x, groups)
        finally:
            tracer.depth -= 1
        if not tracer.depth:
            try:
                tracer.shuffle(x, groups, out)
            except _NoRule:
                tracer.g.freeze(tracer.space(x))
                tracer.fresh_frozen(out)
        return out

    was_training = model.training
    model.eval()
    shufflenetv2.channel_shuffle = traced_shuffle
    try:
        with torch.no_grad(), tracer:
            x = example_input
            tracer.space(x)                  # the image channels: fixed
            out = model(x)
        for t in _tensors(out):               # the model's outputs (class scores): fixed
            g.freeze(tracer.space(t))
    finally:
        shufflenetv2.channel_shuffle = plain_shuffle
        for h in handles:
            h.remove()
        model.train(was_training)
    return g
