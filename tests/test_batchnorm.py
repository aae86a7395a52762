"""BatchNorm family: ops.batch_norm and nn.BatchNorm2d on every backend against a float64 PyTorch
reference: outputs (fused residual + activation), gradients, running statistics over several steps
(momentum and cumulative average), memory format, batch 1, gradcheck, opcheck, torch.compile and
error conditions."""

import pytest
import torch
import torch.nn.functional as F

from pyimgcls import nn, ops
from pyimgcls.ops import batchnorm as bn_ops

from helpers import BACKENDS, assert_close_to_reference, backend_ctx, device_for, dtypes_for, omp_threads, triton_slow

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "nhwc"]
# (affine, activation, residual)
CASES = [(True, None, False), (False, "relu", True), (True, "relu6", True)]


def _case_id(c):
    return f"{'affine' if c[0] else 'noaffine'}-{c[1]}-{'res' if c[2] else 'nores'}"


def _shapes(backend):
    """Odd sizes; N = 1 included (H*W > 1, so training is allowed). Tiny under the Triton interpreter."""
    if backend == "triton" and triton_slow():
        return [(2, 3, 5, 5)]
    return [(3, 5, 7, 6), (1, 4, 3, 5)]


def _skip_dtype(backend, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} does not serve {dtype}")


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x.contiguous()


def _rand(shape, seed, dtype=torch.float64, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


def _act(y, act):
    if act == "relu":
        return F.relu(y)
    if act == "relu6":
        return F.relu6(y)
    return y


def _torch_bn(x, rm, rv, w, b, training, momentum, eps, act, res):
    y = F.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    if res is not None:
        y = y + res
    return _act(y, act)


def _inputs(shape, dtype, device, layout, affine, residual, seed=0):
    C = shape[1]
    # a mean far from zero checks the variance is not computed as E[x^2] - E[x]^2
    x = _layout(_rand(shape, seed, scale=2.0, shift=3.0).to(dtype), layout).to(device)
    w = _rand((C,), seed + 1).to(dtype).to(device) if affine else None
    b = _rand((C,), seed + 2).to(dtype).to(device) if affine else None
    r = _layout(_rand(shape, seed + 3).to(dtype), layout).to(device) if residual else None
    rm = _rand((C,), seed + 4).to(dtype).to(device)
    rv = (_rand((C,), seed + 5).abs() + 0.5).to(dtype).to(device)
    return x, w, b, r, rm, rv


def _cpu64(t):
    return None if t is None else t.detach().cpu().double()


def _cpu(t):
    return None if t is None else t.detach().cpu()


# ----------------------------------------------------------------------------- forward + running stats
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_matches_pytorch(backend, dtype, layout, training, case):
    _skip_dtype(backend, dtype)
    affine, act, residual = case
    dev = device_for(backend)
    for shape in _shapes(backend):
        x, w, b, r, rm, rv = _inputs(shape, dtype, dev, layout, affine, residual)
        rm_ref, rv_ref = _cpu64(rm), _cpu64(rv)
        rm_theirs, rv_theirs = _cpu(rm).clone(), _cpu(rv).clone()
        with backend_ctx(backend):
            out = ops.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, activation=act, residual=r)
        ref = _torch_bn(_cpu64(x), rm_ref, rv_ref, _cpu64(w), _cpu64(b), training, 0.1, 1e-5, act, _cpu64(r))
        f32 = [None if t is None else _cpu(t).float() for t in (x, w, b, r)]
        theirs = _torch_bn(f32[0], rm_theirs.float(), rv_theirs.float(), f32[1], f32[2], training, 0.1, 1e-5, act,
                           f32[3]).to(dtype)
        assert out.dtype == dtype and out.shape == x.shape
        assert out.stride() == F.batch_norm(_cpu(x), None, None, training=True).stride()
        assert_close_to_reference(out, ref, torch_same_dtype=theirs, scale=4.0)
        # running statistics: updated in training (unbiased variance), untouched in eval
        assert rm.dtype == dtype and rv.dtype == dtype
        if dtype in (torch.float32, torch.float64):
            assert_close_to_reference(rm, rm_ref)
            assert_close_to_reference(rv, rv_ref)
        else:
            assert_close_to_reference(rm, rm_ref, torch_same_dtype=rm_ref.to(dtype))
            assert_close_to_reference(rv, rv_ref, torch_same_dtype=rv_ref.to(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward_matches_pytorch(backend, dtype, layout, training, case):
    _skip_dtype(backend, dtype)
    affine, act, residual = case
    dev = device_for(backend)
    shape = _shapes(backend)[0]
    x, w, b, r, rm, rv = _inputs(shape, dtype, dev, layout, affine, residual, seed=7)
    go = _layout(_rand(shape, 11).to(dtype), layout).to(dev)
    leaves = [t for t in (x, w, b, r) if t is not None]
    for t in leaves:
        t.requires_grad_()
    with backend_ctx(backend):
        out = ops.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, activation=act, residual=r)
    out.backward(go)

    def grads(cast):
        ls = [None if t is None else cast(t).requires_grad_() for t in (x, w, b, r)]
        y = _torch_bn(ls[0], cast(rm), cast(rv), ls[1], ls[2], training, 0.1, 1e-5, act, ls[3])
        y.backward(cast(go))
        return [l.grad for l in ls if l is not None]

    ref = grads(lambda t: t.detach().cpu().double())
    theirs = [g.to(dtype) for g in grads(lambda t: t.detach().cpu().float())]
    for t, g64, gt in zip(leaves, ref, theirs):
        assert t.grad.dtype == t.dtype and t.grad.shape == t.shape
        if t.dim() == 4:
            assert t.grad.stride() == t.stride()
        assert_close_to_reference(t.grad, g64, torch_same_dtype=gt, scale=8.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_module_running_stats_over_steps(backend, momentum, layout):
    """Several training steps then eval: running_mean / running_var / num_batches_tracked as
    torch.nn.BatchNorm2d in float64, and the eval output uses them."""
    dev = device_for(backend)
    dtype = torch.float32
    shape = _shapes(backend)[0]
    C = shape[1]
    ours = nn.BatchNorm2d(C, momentum=momentum, activation="relu").to(dev)
    ref = torch.nn.BatchNorm2d(C, momentum=momentum).double()
    with torch.no_grad():
        ours.weight.copy_(_rand((C,), 1))
        ours.bias.copy_(_rand((C,), 2))
    ref.load_state_dict(ours.state_dict())
    with backend_ctx(backend):
        for step in range(3):
            x = _layout(_rand(shape, 20 + step, dtype, scale=1.0 + step, shift=step), layout).to(dev)
            out = ours(x)
            assert_close_to_reference(out, F.relu(ref(_cpu64(x))))
        assert int(ours.num_batches_tracked) == 3 == int(ref.num_batches_tracked)
        assert_close_to_reference(ours.running_mean, ref.running_mean)
        assert_close_to_reference(ours.running_var, ref.running_var)
        ours.eval()
        ref.eval()
        x = _layout(_rand(shape, 30, dtype), layout).to(dev)
        assert_close_to_reference(ours(x), F.relu(ref(_cpu64(x))))


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_without_running_stats_and_affine(backend):
    """track_running_stats=False: batch statistics in training and in eval; affine=False: no params."""
    dev = device_for(backend)
    shape = _shapes(backend)[0]
    ours = nn.BatchNorm2d(shape[1], affine=False, track_running_stats=False).to(dev)
    ref = torch.nn.BatchNorm2d(shape[1], affine=False, track_running_stats=False).double()
    assert ours.weight is None and ours.running_mean is None
    x = _rand(shape, 3).float().to(dev)
    with backend_ctx(backend):
        for mode in (True, False):
            ours.train(mode)
            ref.train(mode)
            assert_close_to_reference(ours(x), ref(_cpu64(x)))


def test_state_dicts_load_both_ways():
    ours = nn.BatchNorm2d(6, momentum=None)
    theirs = torch.nn.BatchNorm2d(6, momentum=None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():
        theirs.running_mean.uniform_()
        theirs.weight.uniform_()
        theirs.num_batches_tracked.fill_(5)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(ours.running_mean, theirs.running_mean) and int(ours.num_batches_tracked) == 5
    back = torch.nn.BatchNorm2d(6, momentum=None)
    back.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(back.weight, theirs.weight)
    assert isinstance(ours, torch.nn.BatchNorm2d)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_dimensional_and_batch_one(backend):
    """[N, C] input (as F.batch_norm), N = 1 with H*W > 1 in training, and the N*H*W == 1 error."""
    dev = device_for(backend)
    x = _rand((5, 4), 1).float().to(dev)
    rm, rv = torch.zeros(4, device=dev), torch.ones(4, device=dev)
    rm_ref, rv_ref = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    with backend_ctx(backend):
        out = ops.batch_norm(x, rm, rv, training=True, activation="relu")
        assert_close_to_reference(out, F.relu(F.batch_norm(_cpu64(x), rm_ref, rv_ref, training=True)))
        assert_close_to_reference(rv, rv_ref)
        one = _rand((1, 3, 1, 1), 2).float().to(dev)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            ops.batch_norm(one, None, None, training=True)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            nn.BatchNorm2d(3).to(dev)(one)
        # eval with a single value per channel is fine
        m = nn.BatchNorm2d(3).to(dev).eval()
        assert_close_to_reference(m(one), torch.nn.BatchNorm2d(3).double().eval()(_cpu64(one)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    """N = 0: empty output, running statistics untouched (ATen), zero parameter gradients."""
    dev = device_for(backend)
    x = torch.zeros((0, 3, 4, 4), device=dev, requires_grad=True)
    w = torch.ones(3, device=dev, requires_grad=True)
    rm, rv = torch.zeros(3, device=dev), torch.ones(3, device=dev)
    with backend_ctx(backend):
        out = ops.batch_norm(x, rm, rv, w, None, training=True)
        out.sum().backward()
    assert out.shape == x.shape
    assert torch.equal(rm.cpu(), torch.zeros(3)) and torch.equal(rv.cpu(), torch.ones(3))
    assert x.grad.shape == x.shape and torch.equal(w.grad.cpu(), torch.zeros(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_backward_select_semantics(backend):
    """Where relu dropped the output, an inf incoming gradient gives 0 in grad_residual (a select,
    as ATen), not NaN."""
    dev = device_for(backend)
    x = _rand((2, 3, 2, 2), 1).float().to(dev)
    r = torch.full((2, 3, 2, 2), -100.0, device=dev, requires_grad=True)  # every output is dropped by relu
    with backend_ctx(backend):
        out = ops.batch_norm(x, None, None, training=True, activation="relu", residual=r)
    out.backward(torch.full_like(out, float("inf")))
    assert torch.equal(r.grad.cpu(), torch.zeros(2, 3, 2, 2))


def test_non_contiguous_input():
    x64 = _rand((3, 4, 6, 10), 1)
    x = x64.float()[:, :, :, ::2]
    with backend_ctx("cpu"):
        out = ops.batch_norm(x, None, None, training=True, activation="relu6")
    assert_close_to_reference(out, F.relu6(F.batch_norm(x64[:, :, :, ::2], None, None, training=True)))


# ----------------------------------------------------------------------------- gradcheck / opcheck / compile
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_cpu(training, layout):
    x = _layout(_rand((3, 2, 3, 2), 1), layout).requires_grad_()
    w = _rand((2,), 2).requires_grad_()
    b = _rand((2,), 3).requires_grad_()
    r = _layout(_rand((3, 2, 3, 2), 4), layout).requires_grad_()
    rm, rv = _rand((2,), 5), _rand((2,), 6).abs() + 0.5

    def f(x, w, b, r):
        return ops.batch_norm(x, rm, rv, w, b, training, 0.0, 1e-5, activation="relu", residual=r)

    with backend_ctx("cpu"):
        assert torch.autograd.gradcheck(f, (x, w, b, r))
        assert torch.autograd.gradcheck(lambda x: ops.batch_norm(x, None, None, training=True), (x,)) if training \
            else True


def test_opcheck_every_op():
    x = _rand((2, 3, 4, 4), 1).float()
    w, b = _rand((3,), 2).float(), _rand((3,), 3).float()
    r = _rand((2, 3, 4, 4), 4).float()
    rm, rv = torch.zeros(3), torch.ones(3)
    torch.library.opcheck(bn_ops._batch_norm_op,
                          (x.requires_grad_(), w.requires_grad_(), b, r, None, None, True, 1e-5, 1, False, "cpu"))
    torch.library.opcheck(bn_ops._batch_norm_op, (x.detach(), w.detach(), None, None, rm, rv, False, 1e-5, 0, False,
                                                  "cpu"))
    out, mean, invstd, var = bn_ops._batch_norm_op(x.detach(), w.detach(), b, r, None, None, True, 1e-5, 1, False,
                                                   "cpu")
    torch.library.opcheck(bn_ops._batch_norm_update_stats_op, (rm, rv, mean, var, 0.1, 32, "cpu"))
    torch.library.opcheck(bn_ops._batch_norm_update_stats_op, (None, rv, mean, var, 0.1, 32, "cpu"))
    g = _rand((2, 3, 4, 4), 5).float()
    torch.library.opcheck(bn_ops._batch_norm_backward_op,
                          (g, x.detach(), w.detach(), out, mean, invstd, True, 1, False, True, True, True, True, "cpu"))


def test_torch_compile_fullgraph_cpu():
    """torch.compile(fullgraph=True) accepts the ops, including the in-place running-stats update."""
    torch._dynamo.reset()
    m = nn.BatchNorm2d(3, activation="relu")
    ref = nn.BatchNorm2d(3, activation="relu")
    ref.load_state_dict(m.state_dict())

    def step(mod, x, r):
        return mod(x, residual=r)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x, r = _rand((2, 3, 4, 4), 1).float(), _rand((2, 3, 4, 4), 2).float()
    with backend_ctx("cpu"):
        out_c = compiled(m, x, r)
        out_e = step(ref, x, r)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(m.running_mean, ref.running_mean)
    torch.testing.assert_close(m.running_var, ref.running_var)
    assert int(m.num_batches_tracked) == 1


# ----------------------------------------------------------------------------- CPU kernel branches
# csrc/cpu/batchnorm.cpp (channels_last) cuts the M = N*H*W rows of each reduction into
# num_chunks(M) = clamp(M / kMinChunkRows (64), 1, kMaxChunks (64)) chunks of ceil(M / chunks) rows,
# flushes its element-type accumulators into float64 every kFlushRows (128) rows of a chunk, and adds
# the chunk partials in order; NCHW reduces one channel per work item over N planes. Both run OpenMP
# when N*C*S >= 2^15 and omp_get_max_threads() > 1 -- the system libgomp's count, which
# torch.set_num_threads does not reach, so the test sets it itself. The other tests have M <= 126
# (one chunk, one thread). These shapes reach:
#   (2, 3, 10, 13): M = 260   -> 4 chunks of 65 rows, serial (780 elements)
#   (3, 5, 81, 81): M = 19683 -> 64 chunks of 308 rows (the last 279): flushes inside a chunk, OpenMP
# and the element-wise passes over short NCHW planes (S < 64: one C*S loop per image, in tasks of
# (image, block of 4096 values)):
#   (2, 1152, 2, 2): C*S = 4608 -> 2 blocks per image (the second a 512-value tail), serial
#   (3, 700, 7, 7):  C*S = 34300 -> 9 blocks per image, 27 tasks on 2 threads
BIG_SHAPES = [(2, 3, 10, 13), (3, 5, 81, 81), (2, 1152, 2, 2), (3, 700, 7, 7)]
# + relu without residual: the backward's masked-gradient scratch row (with a residual it writes grad_pre)
BIG_CASES = CASES + [(True, "relu", False)]


@pytest.mark.parametrize("case", BIG_CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", BIG_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_many_rows_per_channel(shape, layout, dtype, case):
    """Training forward, running statistics and backward with several row chunks per channel, on 2
    threads, against float64 PyTorch; and bit-identical on 1 thread (the chunking depends on the
    shape only). A mean far from zero also checks the shifted sums."""
    affine, act, residual = case
    x, w, b, r, rm, rv = _inputs(shape, dtype, "cpu", layout, affine, residual, seed=13)
    go = _layout(_rand(shape, 14).to(dtype), layout)
    runs = []
    for threads in (2, 1):
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (x, w, b, r)]
        rm_, rv_ = rm.clone(), rv.clone()
        with omp_threads(threads), backend_ctx("cpu"):
            out = ops.batch_norm(leaves[0], rm_, rv_, leaves[1], leaves[2], True, 0.1, 1e-5, activation=act,
                                 residual=leaves[3])
            out.backward(go)
        runs.append([out.detach(), rm_, rv_] + [t.grad for t in leaves if t is not None])
    ref_leaves = [None if t is None else _cpu64(t).requires_grad_() for t in (x, w, b, r)]
    rm64, rv64 = _cpu64(rm), _cpu64(rv)
    ref = _torch_bn(ref_leaves[0], rm64, rv64, ref_leaves[1], ref_leaves[2], True, 0.1, 1e-5, act, ref_leaves[3])
    ref.backward(_cpu64(go))
    want = [ref.detach(), rm64, rv64] + [t.grad for t in ref_leaves if t is not None]
    names = ["out", "running_mean", "running_var"] + [n for n, t in zip("xwbr", ref_leaves) if t is not None]
    for name, got, exp in zip(names, runs[0], want):
        assert got.dtype == dtype, name
        try:
            assert_close_to_reference(got, exp, scale=8.0)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
    for name, two, one in zip(names, *runs):
        assert torch.equal(two, one), f"{name} differs between 2 threads and 1"


# ----------------------------------------------------------------------------- errors
def test_bad_arguments_raise_clear_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="num_features=4"):
        nn.BatchNorm2d(4)(x)
    with pytest.raises(ValueError, match="expected 4D input"):
        nn.BatchNorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="running_mean.*should contain 3 elements not 4"):
        ops.batch_norm(x, torch.zeros(4), torch.ones(3), training=True)
    with pytest.raises(ValueError, match="weight.*should contain 3 elements not 2"):
        ops.batch_norm(x, None, None, torch.ones(2), training=True)
    with pytest.raises(ValueError, match="activation"):
        ops.batch_norm(x, None, None, training=True, activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        nn.BatchNorm2d(3, activation="tanh")
    with pytest.raises(RuntimeError, match="running_mean.*must be defined in evaluation mode"):
        ops.batch_norm(x, None, None, training=False)
    with pytest.raises(RuntimeError, match="running_var.*must be defined in evaluation mode"):
        ops.batch_norm(x, torch.zeros(3), None, training=False)
    with pytest.raises(ValueError, match="residual"):
        ops.batch_norm(x, None, None, training=True, residual=torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match="input"):
        ops.batch_norm(x.long(), None, None, training=True)
    with pytest.raises(TypeError, match="residual"):
        ops.batch_norm(x, None, None, training=True, residual=x.double())
    with pytest.raises(ValueError, match="input"):
        ops.batch_norm(torch.randn(3), None, None, training=True)


# ----------------------------------------------------------------------------- CUDA only
@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_deterministic_and_large(layout, dtype):
    """Large shapes (many chunks in the two-level reduction): bitwise repeatable, close to PyTorch."""
    x = _layout(_rand((32, 64, 28, 28), 1, scale=3.0, shift=5.0).to(dtype), layout).cuda().requires_grad_()
    w = torch.randn(64, device="cuda", requires_grad=True)
    go = torch.randn_like(x)
    results = []
    for _ in range(2):
        with backend_ctx("cuda"):
            out = ops.batch_norm(x, None, None, w, None, True, activation="relu")
        gx, gw = torch.autograd.grad(out, (x, w), go)
        results.append((out, gx, gw))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    ref = F.relu(F.batch_norm(_cpu64(x), None, None, _cpu64(w), None, True))
    theirs = F.relu(F.batch_norm(x.detach(), None, None, w.detach(), None, True))
    assert_close_to_reference(results[0][0], ref, torch_same_dtype=theirs, scale=4.0)


def test_autocast_keeps_input_dtype():
    """batch_norm is on no autocast list: under AMP it runs in the input's dtype, as PyTorch."""
    x = _rand((2, 3, 4, 4), 1).float()
    with torch.autocast("cpu", dtype=torch.bfloat16), backend_ctx("cpu"):
        out = ops.batch_norm(x, None, None, training=True)
        theirs = F.batch_norm(x, None, None, training=True)
    assert out.dtype == theirs.dtype == torch.float32
    assert_close_to_reference(out, F.batch_norm(_cpu64(x), None, None, training=True))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_eager_fast_path_matches_custom_ops(training):
    """Plain eager mode runs the kernels through a bare autograd.Function; the registered custom ops
    must give bit-identical outputs, running statistics and gradients."""
    from pyimgcls.ops import _eager

    results = []
    for enabled in (True, False):
        x, w, b, r, rm, rv = _inputs((3, 4, 5, 6), torch.float32, "cpu", "nhwc", True, True, seed=3)
        for t in (x, w, b, r):
            t.requires_grad_()
        old = _eager.ENABLED
        _eager.ENABLED = enabled
        try:
            with backend_ctx("cpu"):
                out = ops.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, activation="relu", residual=r)
                grads = torch.autograd.grad(out, (x, w, b, r), torch.ones_like(out))
        finally:
            _eager.ENABLED = old
        results.append((out, rm, rv) + grads)
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)


@pytest.mark.parametrize("bias", [True, False])
def test_module_without_torch_bias_keyword(monkeypatch, bias):
    """torch < 2.12 (the GPU machines' 2.11) has no ``bias`` keyword in nn.BatchNorm2d: there the module
    applies bias=False itself, with the same parameters, state_dict keys and outputs."""
    import pyimgcls.nn.batchnorm as bn_mod
    want = nn.BatchNorm2d(4, bias=bias)
    monkeypatch.setattr(bn_mod, "_TORCH_BN_TAKES_BIAS", False)
    real_init = torch.nn.modules.batchnorm._BatchNorm.__init__

    def init_without_bias(self, *args, **kwargs):
        assert "bias" not in kwargs, "the bias keyword reached torch's __init__"
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.modules.batchnorm._BatchNorm, "__init__", init_without_bias)
    got = nn.BatchNorm2d(4, bias=bias)
    assert list(got.state_dict()) == list(want.state_dict())
    assert [n for n, _ in got.named_parameters()] == [n for n, _ in want.named_parameters()]
    assert (got.bias is None) == (not bias)
    got.load_state_dict(want.state_dict())
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(got(x), want(x))
