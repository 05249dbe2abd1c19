"""The private TorchInductor and Dynamo API optlab.optim._inductor relies on is still there.

``_inductor`` was written for one torch version; when an upgrade moves what it
uses, the fused path falls back (slower) or stops compiling, and these tests
fail naming the installed torch and what moved. One tiny compile (about 6 s
on the 2-core machine) goes through every function ``_fused`` calls.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optlab.optim import _fused, _inductor


def _moved(what: str) -> None:
    pytest.fail(
        f"torch {torch.__version__}: {what}. optlab.optim._inductor was written for torch "
        f"{_inductor.WRITTEN_FOR}; update it (and this test) for this version.",
        pytrace=False,
    )


def _resolve(path: str):
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for index, attribute in enumerate(parts[cut:], start=cut):
            if not hasattr(value, attribute):
                _moved(f"{'.'.join(parts[:index])} has no attribute {attribute!r} (for {path})")
            value = getattr(value, attribute)
        return value
    _moved(f"{path} cannot be imported")


@pytest.mark.parametrize("path", _inductor.PRIVATE_API)
def test_every_private_attribute_exists(path):
    _resolve(path)


def test_dynamo_and_inductor_are_found():
    if (reason := _inductor.missing()) is not None:
        _moved(reason)


def test_the_private_functions_take_the_arguments_used():
    compile_fx = _resolve("torch._inductor.compile_fx.compile_fx")
    if "inner_compile" not in inspect.signature(compile_fx).parameters:
        _moved("torch._inductor.compile_fx.compile_fx takes no inner_compile argument")
    inner = list(
        inspect.signature(_resolve("torch._inductor.compile_fx.compile_fx_inner")).parameters
    )
    if len(inner) < 2:
        _moved(
            f"torch._inductor.compile_fx.compile_fx_inner takes {inner}, not (graph, inputs, ...)"
        )
    address = _resolve("torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr")
    if not isinstance(address, int) or address == 0:
        _moved(f"_torchinductor_pyobject_tensor_data_ptr is {address!r}, not an address")
    if not isinstance(_resolve("torch._inductor.config.compile_threads"), int):
        _moved("torch._inductor.config.compile_threads is not an int")
    if not isinstance(_resolve("torch.utils._triton.has_triton")(), bool):
        _moved("torch.utils._triton.has_triton() does not return a bool")
    codecache = inspect.getsource(importlib.import_module("torch._inductor.codecache"))
    if "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR" not in codecache:
        _moved("compiled C++ modules no longer read $_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR")


def test_the_cache_folder_is_inductors(monkeypatch, tmp_path):
    utils = importlib.import_module("torch._inductor.runtime.cache_dir_utils")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    if _inductor.cache_root() != Path(utils.default_cache_dir()).absolute():
        _moved(f"Inductor's default cache folder is {utils.default_cache_dir()}")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    if _inductor.cache_root() != Path(utils.cache_dir()):
        _moved(f"Inductor's cache folder under $TORCHINDUCTOR_CACHE_DIR is {utils.cache_dir()}")


def test_fused_reaches_private_torch_api_only_through_inductor():
    tree = ast.parse(Path(_fused.__file__).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id == "torch" and node.attr != "__version__":
                found.append(f"line {node.lineno}: .{node.attr}")
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module or ""]
        found += [
            f"line {node.lineno}: import {name}"
            for name in modules
            if name.startswith("torch") and "._" in name
        ]
    assert not found, f"_fused.py uses private torch API outside _inductor.py: {found}"


# ----- one tiny compile, through every function _fused calls -----------------

_NAMES = ["t0_0", "t0_1", "t1_0", "t1_1", "scalars"]
_WIDTH = 2  # tensors per set


def _bucket(t0_0, t0_1, t1_0, t1_1, scalars):
    """Two tensor sets of an SGD-like rule: both tensors of a set updated in place."""
    for param, grad in ((t0_0, t0_1), (t1_0, t1_1)):
        grad.copy_(grad * scalars[1])
        param.copy_(param - scalars[0] * grad)


def _inputs(shapes, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.rand(shape, generator=generator) + 0.5 for shape in shapes for _ in "pg"]
    return [*tensors, torch.tensor([0.1, 0.5], dtype=torch.float64)]


def _agrees(runner, shapes, seed=3):
    """``runner`` on fresh tensors of ``shapes`` does what the function does eagerly."""
    ours, eager = _inputs(shapes, seed), _inputs(shapes, seed)
    with torch.no_grad():
        runner(ours[:-1], ours[-1])
    _bucket(*eager)
    return all(torch.allclose(a, b) for a, b in zip(ours, eager, strict=True))


@pytest.fixture(scope="module")
def compiled():
    if (reason := _fused._probe("cpu")) is not None:
        pytest.skip(f"cannot compile on CPU: {reason}")
    inputs = _inputs([(101,), (103,)], seed=0)
    result = _inductor.compile_function(_bucket, _NAMES, inputs, {"compile_threads": 1})
    if result.wrapper is None:
        _moved("compile_fx_inner's output has no current_callable (the generated call)")
    if result.plan is None:
        _moved(
            "a graph placeholder's meta['grapharg'].source is neither a LocalSource "
            "(local_name) nor a SIZE TensorPropertySource of one (base, prop, idx)"
        )
    return result


def test_the_compile_captures_the_wrapper_and_maps_its_inputs(compiled):
    tensors = {index for index, is_size in compiled.plan if not is_size}
    if tensors != set(range(len(_NAMES))):
        _moved(f"the graph's inputs {compiled.plan} do not name each argument once")
    if not any(is_size for _, is_size in compiled.plan):
        _moved(f"no graph input is an element count (dynamic=True): {compiled.plan}")
    if "assert_size_stride" not in _inductor._globals(compiled.wrapper):
        _moved("the generated module has no global assert_size_stride (its layout check)")


def test_the_wrapper_runs_on_tensors_of_other_sizes_and_dimensions(compiled):
    runner = _inductor.wrapper_runner(compiled.wrapper, compiled.plan, len(_NAMES) - 1, False)
    if not _agrees(runner, [(3, 7), (5,)]):
        _moved("Inductor's generated call(args) on N-D tensors of new sizes disagrees with eager")


def test_the_cpp_kernel_is_called_directly_and_loads_in_a_fresh_process(compiled):
    wrapper = _inductor.wrapper_runner(compiled.wrapper, compiled.plan, len(_NAMES) - 1, False)
    sizes = [107, 109]
    scratch = _inputs([(size,) for size in sizes], seed=1)
    found = _inductor.cpp_kernel_call(
        compiled.wrapper, lambda: wrapper(scratch[:-1], scratch[-1]), scratch, sizes, _WIDTH
    )
    if found is None:
        _moved(
            "the generated call does not call exactly one cpp_fused_* global, once, "
            "with only the tensors and their element counts"
        )
    kernel, items = found
    if not _agrees(_inductor.cpp_runner(kernel, items), [(3, 7), (5,)]):
        _moved(f"the C++ kernel called with {items} disagrees with eager")
    location = _inductor.cpp_library(kernel)
    if location is None or not Path(location[0]).is_file():
        _moved(f"the C++ kernel's __self__ is not a module with a __file__: {location}")
    library, module = location
    script = f"""
import sys, torch
from optlab.optim import _inductor
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_inductor_api import _agrees
kernel = _inductor.load_cpp_kernel({module!r}, {library!r})
assert "torch._inductor" not in sys.modules, "loading imported Inductor"
print(_agrees(_inductor.cpp_runner(kernel, {items!r}), [(3, 7), (5,)]))
"""
    env = {k: v for k, v in os.environ.items() if k != "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    if result.returncode != 0 or result.stdout.strip() != "True":
        _moved(f"a compiled C++ module does not load and run in a fresh process: {result.stderr}")


def _bits(t0, t1, scalars):
    """bf16 truncation through the float32 bit pattern, as the compact kernels round."""
    t1.copy_(((t0.view(torch.int32) + 0x7FFF) & -65536).view(torch.float32) * scalars[0])


def test_bit_casts_compile_to_vector_casts_only_while_optlab_compiles():
    """``vectorized_bitcasts`` makes float32 <-> int32 casts register casts in the generated
    C++ (Inductor's own code is a scalar loop, which made bf16 rounding 3x slower), and
    leaves Inductor as it was afterwards (a user's own torch.compile is untouched)."""
    if (reason := _fused._probe("cpu")) is not None:
        pytest.skip(f"cannot compile on CPU: {reason}")
    from torch._inductor.codegen import cpp

    before = cpp.CppVecOverrides.__dict__["to_dtype_bitcast"]
    generator = torch.Generator().manual_seed(4)
    inputs = [torch.randn(1000, generator=generator), torch.empty(1000)]
    inputs.append(torch.tensor([2.0], dtype=torch.float64))
    result = _inductor.compile_function(
        _bits, ["t0", "t1", "scalars"], inputs, {"compile_threads": 1}
    )
    assert cpp.CppVecOverrides.__dict__["to_dtype_bitcast"] is before
    path = _inductor.wrapper_file(result.wrapper)
    if path is None:
        _moved("the generated call's module has no __file__")
    source = Path(path).read_text()
    if "at::vec::cast<int32_t>" not in source or "at::vec::cast<float>" not in source:
        _moved(
            "a float32 <-> int32 bit cast in a vectorised loop no longer reaches "
            "CppVecOverrides.to_dtype_bitcast"
        )
    assert "c10::bit_cast" not in source
    expected = torch.empty(1000)
    _bits(inputs[0], expected, inputs[2])
    assert torch.equal(inputs[1], expected)


def _int8_adam_bucket():
    """optlab's int8-state Adam kernel function for one tensor set of whole blocks: the
    moments decoded, the rule, each moment coded again with its new per-block absmax."""
    from optlab.optim.adam import _adam_rule

    compact = (None, None, ("int8", "signed", 0), ("int8", "nonnegative", 1), None)
    layout = _fused.Layout((compact, "blocks", 8))
    present = (True, True, True, True, False)
    return _fused._bucket_function(_adam_rule, present, 1, {"amsgrad": False}, False, layout)


def _blockwise_inputs(rows, seed):
    """param, grad, m codes, m absmax, v codes, v absmax (as rows of 256), then the scalars:
    sign, l2, decay, beta1, beta2, eps, step size, sqrt(bias correction 2), two seeds."""
    generator = torch.Generator().manual_seed(seed)
    scalars = [1.0, 0.0, 1.0, 0.9, 0.999, 1e-8, 1e-3, 0.3, 12345.0, 678.0]
    return [
        torch.randn(rows, 256, generator=generator),
        torch.randn(rows, 256, generator=generator),
        torch.randint(-127, 128, (rows, 256), generator=generator).to(torch.int8),
        torch.rand(rows, generator=generator) + 0.5,
        torch.randint(1, 256, (rows, 256), generator=generator).to(torch.uint8),
        torch.rand(rows, generator=generator) + 0.5,
        torch.tensor(scalars, dtype=torch.float64),
    ]


def _full_size_temporaries(wrapper) -> tuple[list[str], str]:
    path = _inductor.wrapper_file(wrapper)
    if path is None:
        _moved("the generated call's module has no __file__")
    source = Path(path).read_text()
    return re.findall(r"empty_strided_cpu\(\(\w+, 256\)", source), source


@pytest.mark.parametrize("blockwise", [False, True])
def test_blockwise_fusion_keeps_a_blocks_intermediates_local(blockwise):
    """Without ``blockwise_fusion`` Inductor 2.13 writes an int8 Adam step's new moments to
    full-size float32 temporaries and reads them back in later passes; with it, one loop
    over the rows keeps them in per-row local buffers. The eager function's results either
    way (as the fused path checks compact kernels), and Inductor is as it was afterwards."""
    if (reason := _fused._probe("cpu")) is not None:
        pytest.skip(f"cannot compile on CPU: {reason}")
    from torch._inductor.codegen import cpp

    before = {
        name: cpp.CppScheduling.__dict__[name]
        for name in ("_get_outer_loop_fusion_depth", "codegen_outer_loop_node")
    }
    function, names = _int8_adam_bucket()
    inputs = _blockwise_inputs(37, seed=1)
    for tensor in inputs:  # as blockwise=True marks them, here always (the same graph)
        if tensor.dim() == 2:
            torch._dynamo.mark_static(tensor, 1)
    layout = _fused.Layout(((), "blocks", 8))  # any compact layout: the options are its kind's
    result = _inductor.compile_function(
        function, names, inputs, _fused._options(layout), wide=True, blockwise=blockwise
    )
    assert {name: cpp.CppScheduling.__dict__[name] for name in before} == before
    temporaries, source = _full_size_temporaries(result.wrapper)
    if blockwise:
        assert temporaries == [] and "local_buffer_data" in source
    elif not temporaries:
        _moved("Inductor fuses a block step into one pass by itself: blockwise_fusion may go")
    # Called as _fused calls it: 1-D tensors, the row count as numel // 256.
    rows = dict.fromkeys((0, 1, 2, 4), 256)
    runner = _inductor.wrapper_runner(result.wrapper, result.plan, len(names) - 1, False, rows)
    got, expected = _blockwise_inputs(53, seed=2), _blockwise_inputs(53, seed=2)
    runner([t.view(-1) for t in got[:-1]], got[-1])
    function(*expected)
    # As _fused accepts a compact kernel: codes equal but for a few one off at a threshold.
    assert all(_fused._agree(a.view(-1), b.view(-1)) for a, b in zip(got, expected, strict=True))
