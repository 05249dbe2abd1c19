"""Everything the fused path takes from TorchInductor's and Dynamo's private internals.

Written for torch 2.13 (:data:`WRITTEN_FOR`). :mod:`optlab.optim._fused`
reaches private torch API only through the functions below (and calls the
public ``torch.compile``); each docstring names what it relies on, and
``tests/test_inductor_api.py`` checks every one of those assumptions against
the installed torch, naming its version and what moved. Where one stops
holding at run time, the fused path degrades as :mod:`optlab.optim._fused`
describes: a kernel called through Dynamo (slower) or compiled anew instead
of loaded, never a wrong step (every way of calling a kernel is checked
against the eager rule first).

Nothing here imports Inductor at import time: that costs seconds, paid only
when a kernel is compiled.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

#: The torch version this module was written (and last checked) for.
WRITTEN_FOR = "2.13"

#: The private attributes read here, as dotted paths (tests/test_inductor_api.py
#: checks that each still exists).
PRIVATE_API = (
    "torch._inductor.compile_fx.compile_fx",
    "torch._inductor.compile_fx.compile_fx_inner",
    "torch._inductor.config.compile_threads",
    "torch._functorch.config.enable_autograd_cache",
    "torch.utils._triton.has_triton",
    "torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr",
    "torch._inductor.codegen.cpp.CppVecOverrides.to_dtype_bitcast",
    "torch._inductor.codegen.cpp.DTYPE_TO_CPP",
    "torch._inductor.codegen.cpp.CppVecKernel._get_num_vectors",
    "torch._inductor.codecache.PyCodeCache.load_by_key_path",
    "torch._inductor.codegen.cpp.TilingSelect.select_tiling",
    "torch._inductor.cpu_vec_isa.pick_vec_isa",
    "torch._inductor.codegen.cpp.CppScheduling._get_outer_loop_fusion_depth",
    "torch._inductor.codegen.cpp.CppScheduling.codegen_outer_loop_node",
    "torch._inductor.codegen.cpp.OuterLoopFusedSchedulerNode",
    "torch._dynamo.mark_static",
    "torch._inductor.config.fx_graph_cache",
)

#: What a direct call's argument expressions are evaluated over: ``t`` the
#: tensors of a bucket (tensor sets, then GradScaler's tensors), ``h`` the scalar vector.
Runner = Callable[[Sequence[Tensor], Tensor], Any]


# ----- availability ---------------------------------------------------------


def missing() -> str | None:
    """Why Dynamo and Inductor cannot be used, or ``None``: ``torch._dynamo`` and
    ``torch._inductor`` are found (not imported: that takes seconds)."""
    try:
        found = all(importlib.util.find_spec(name) for name in ("torch._dynamo", "torch._inductor"))
    except Exception as error:  # pragma: no cover - depends on the installation
        return f"TorchInductor cannot be found ({type(error).__name__}: {error})"
    if not found:  # pragma: no cover - depends on the installation
        return "TorchInductor is not part of this torch installation"
    return None


def triton_missing() -> str | None:
    """Why Inductor cannot emit Triton, or ``None``: ``torch.utils._triton.has_triton()``."""
    try:
        from torch.utils._triton import has_triton
    except Exception:  # pragma: no cover
        return "Triton support cannot be imported"
    return None if has_triton() else "Triton is not installed (pip install triton)"


def cache_root() -> Path:
    """Inductor's cache folder, by its own rule, without importing Inductor.

    Mirrors ``torch._inductor.runtime.cache_dir_utils.cache_dir()`` (which also
    creates the folder and sets the variable): ``$TORCHINDUCTOR_CACHE_DIR``,
    else ``default_cache_dir()``, ``<tempdir>/torchinductor_<user>``.
    """
    root = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if root is None:
        try:
            user = getpass.getuser()
        except (KeyError, ModuleNotFoundError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        root = os.path.join(
            tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user)
        )
    return Path(root).absolute()


# ----- compiling --------------------------------------------------------------


class Compiled(NamedTuple):
    """A compiled function: ``call`` through Dynamo (guarded, always works), and
    where found, Inductor's generated wrapper with the map of its inputs."""

    call: Callable[..., Any]
    #: The generated module's ``call(args)``; its tensor layout checks are switched off.
    wrapper: Callable[[list[Any]], Any] | None
    #: Per graph input: (index of the function's argument, whether it is its element count).
    plan: list[tuple[int, bool]] | None


def compile_function(
    function: Callable[..., Any],
    names: Sequence[str],
    inputs: Sequence[Tensor],
    options: Mapping[str, Any],
    wide: bool = False,
    blockwise: bool = False,
) -> Compiled:
    """``torch.compile(function, dynamic=True, fullgraph=True)``, run once on ``inputs``.

    ``wide``: vector loops twice as wide as Inductor picks (:func:`wide_tiling`);
    ``blockwise``: per-block reductions fused with their consumers
    (:func:`blockwise_fusion`), and the second dimension of every 2-D input
    (rows of blocks) compiled as fixed (``torch._dynamo.mark_static``).

    ``names`` are ``function``'s argument names. Raises what compiling raises.
    Relies on:

    - ``torch._inductor.compile_fx.compile_fx(graph, inputs, inner_compile=...)``
      as the backend, and the output of ``compile_fx_inner`` having
      ``current_callable``: the generated module's ``call``;
    - the graph's placeholders carrying ``meta["grapharg"].source``: a local
      argument's source has ``local_name``; an element count's has ``base``,
      ``prop.name == "SIZE"`` and ``idx == 0`` (Dynamo's ``LocalSource`` and
      ``TensorPropertySource``);
    - ``torch._functorch.config.enable_autograd_cache`` and
      ``torch._inductor.config`` (``options``, e.g. ``compile_threads``);
    - the generated module's global ``assert_size_stride(tensor, size,
      stride, ...)``, replaced by :func:`_element_count_check` (the caller
      passes contiguous tensors, N-D ones indexed linearly) until
      :func:`trust_layout` makes it a no-op.
    """
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner

    captured: dict[str, Any] = {}

    def inner_compile(graph, example_inputs, **kwargs):
        output = compile_fx_inner(graph, example_inputs, **kwargs)
        captured["output"] = output
        return output

    def backend(graph, example_inputs):
        captured["plan"] = _input_plan(graph, names)
        return compile_fx(graph, example_inputs, inner_compile=inner_compile)

    compiled = torch.compile(function, dynamic=True, fullgraph=True, backend=backend)
    if blockwise:
        for tensor in inputs:
            if tensor.dim() == 2:
                torch._dynamo.mark_static(tensor, 1)
    # Inductor's FX graph cache keys on the graph and the config, not on the code
    # generation patched here: it served a Lion bf16 kernel compiled by an earlier
    # version without them (12.7 ms a step instead of 6.2 ms on 16.8M parameters).
    # optlab's own records (``_fused._remember``) spare a later process the compile.
    options = {**options, "fx_graph_cache": False}
    with (
        torch.no_grad(),
        torch._functorch.config.patch(enable_autograd_cache=False),
        torch._inductor.config.patch(dict(options)),
        vectorized_bitcasts(),
        wide_tiling() if wide else contextlib.nullcontext(),
        blockwise_fusion() if blockwise else contextlib.nullcontext(),
    ):
        compiled(*inputs)
    wrapper = getattr(captured.get("output"), "current_callable", None)
    plan = captured.get("plan")
    if wrapper is None or plan is None:
        return Compiled(compiled, None, None)
    _check_element_counts(wrapper)
    return Compiled(compiled, wrapper, plan)


#: Bit casts between equally wide types that :func:`vectorized_bitcasts` keeps vectorised.
_SAME_WIDTH = {(torch.float32, torch.int32), (torch.int32, torch.float32)}


@contextlib.contextmanager
def vectorized_bitcasts() -> Iterator[None]:
    """While compiling: Inductor's vectorised C++ reinterprets float32 <-> int32 in registers.

    Inductor 2.13 has no vector form of ``to_dtype_bitcast`` (``x.view(torch.int32)``
    in a kernel): it stores each vector to a buffer and casts element by element,
    which made the bit-level stochastic rounding of bf16 state (:func:`._lowp.round_bf16`)
    three times slower (12.8 ms against 4.2 ms on 2^24 values). Within this context, such a
    cast of a vector is ``at::vec::cast`` (ATen's bit reinterpretation) per
    register; every other cast keeps Inductor's code. Relies on
    ``torch._inductor.codegen.cpp.CppVecOverrides.to_dtype_bitcast(x, dtype,
    src_dtype)`` being the vector form's static method, called with a vector
    ``x`` (the class wraps its methods on instantiation), on ``DTYPE_TO_CPP``
    and on ``V.kernel._get_num_vectors(dtype)``.
    """
    from torch._inductor.codegen import cpp
    from torch._inductor.virtualized import V

    scalarised = cpp.CppVecOverrides.__dict__["to_dtype_bitcast"]

    def to_dtype_bitcast(x: Any, dtype: torch.dtype, src_dtype: torch.dtype) -> Any:
        if (src_dtype, dtype) not in _SAME_WIDTH:
            return scalarised.__func__(x, dtype, src_dtype)
        target = cpp.DTYPE_TO_CPP[dtype]
        count = V.kernel._get_num_vectors(dtype)
        if count == 1:
            return f"at::vec::cast<{target}>({x})"
        return (
            f"[&]() {{ at::vec::VectorizedN<{target}, {count}> r; "
            f"for (int k = 0; k < {count}; k++) r[k] = at::vec::cast<{target}>({x}[k]); "
            "return r; }()"
        )

    cpp.CppVecOverrides.to_dtype_bitcast = staticmethod(to_dtype_bitcast)
    try:
        yield
    finally:
        cpp.CppVecOverrides.to_dtype_bitcast = scalarised


def floats_per_register() -> int:
    """How many float32 one vector register of Inductor's CPU code holds: 8 with AVX2,
    16 with AVX-512, 0 without a vector instruction set. Imports Inductor (seconds the
    first time). Relies on ``cpu_vec_isa.pick_vec_isa().nelements(dtype=...)``."""
    from torch._inductor import cpu_vec_isa

    return int(cpu_vec_isa.pick_vec_isa().nelements(dtype=torch.float))


@contextlib.contextmanager
def wide_tiling() -> Iterator[None]:
    """While compiling: CPU vector loops over two float32 registers, not one.

    For a loop over float32 and bf16 tensors together (bf16 moments of float32
    parameters) Inductor 2.13 picks one register of float32 per step (16 on
    AVX-512), so every bf16 load and store fills half a register through a
    mask. Two registers per step make them whole: a bf16-state Adam step
    written for ``torch.compile`` took 5.2-5.7 ms instead of 8.3-9.4 ms on 2^24
    parameters (the same code with float32 state: 6.9-7.8 ms). Applied to the
    compact-state kernels, and to full-precision ones where a register holds 8
    float32 (AVX2; :func:`floats_per_register`, ``_fused._wide``). Relies on
    ``torch._inductor.codegen.cpp.TilingSelect.select_tiling`` returning
    ``(factors, indices, stats)`` and on ``cpu_vec_isa.pick_vec_isa().nelements()``.
    """
    from torch._inductor import cpu_vec_isa
    from torch._inductor.codegen import cpp

    chosen = cpp.TilingSelect.__dict__["select_tiling"]
    one_register = cpu_vec_isa.pick_vec_isa().nelements(dtype=torch.float)

    def select_tiling(self: Any, *args: Any, **kwargs: Any) -> Any:
        factors, indices, stats = chosen(self, *args, **kwargs)
        if one_register and factors and all(f == one_register for f in factors):
            factors = [2 * f for f in factors]
        return factors, indices, stats

    cpp.TilingSelect.select_tiling = select_tiling
    try:
        yield
    finally:
        cpp.TilingSelect.select_tiling = chosen


@contextlib.contextmanager
def blockwise_fusion() -> Iterator[None]:
    """While compiling: a per-block reduction and its consumers in one loop over the blocks.

    An int8 kernel (:mod:`._lowp`) computes a block's new moments, reduces each to
    its absmax and codes it with that absmax. Inductor 2.13's CPU code can fuse
    such nodes into one loop over the rows (blocks) whose body runs one inner
    loop per node ("outer loop fusion"), keeping the row's intermediates in
    small local buffers; for this kernel it did not, and made full-size float32
    temporaries and two or three passes over memory instead, because:

    - a node with no inner loop (the copy of a row's absmax into the state, a
      loop over the rows alone) joined the group and its vector loop failed
      the group's "same tiling at every level" check, which drops the whole
      group: such nodes are left out of it (they run after it, over the rows);
    - a group of depth 1 took a reduction but not two pointwise nodes after
      it (their common depth, 2, is not the group's): nodes whose outer loop
      variables match the group's are fused at the group's depth;
    - a buffer is kept local only if all its users are in the group, and the
      users include "weak" ones, ordering-only dependencies that read nothing
      (the state's mutation after the old state has been read): they are not
      counted while the group's code is generated. The group is generated
      before those nodes, so the order they stand for holds.

    With all three an Adam step with int8 state is one pass (0 bytes of
    temporaries per element; measured in docs/benchmarks.md). Relies on
    ``torch._inductor.codegen.cpp.CppScheduling._get_outer_loop_fusion_depth(node1,
    node2)`` and ``codegen_outer_loop_node(node)``, ``OuterLoopFusedSchedulerNode``
    (``outer_loop_fusion_depth``, ``get_outer_nodes()``), scheduler nodes'
    ``group`` (``(device, (vars, reduction_vars))``), ``get_nodes()``,
    ``get_outputs()``, and buffers' ``users`` with ``is_weak``.
    """
    from torch._inductor.codegen import cpp

    scheduling = cpp.CppScheduling
    outer_type = cpp.OuterLoopFusedSchedulerNode
    chosen_depth = scheduling.__dict__["_get_outer_loop_fusion_depth"]
    chosen_codegen = scheduling.__dict__["codegen_outer_loop_node"]

    def loop_vars(node: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        _, (variables, reduction) = max(node.get_nodes(), key=lambda n: int(n.is_reduction())).group
        return tuple(variables), tuple(reduction)

    def fusion_depth(self: Any, node1: Any, node2: Any) -> int:
        depth = chosen_depth(self, node1, node2)
        groups = [node for node in (node1, node2) if type(node) is outer_type]
        if not depth and len(groups) == 1:
            group = groups[0]
            last = node1.get_outer_nodes()[-1] if node1 is group else node1
            first = node2.get_outer_nodes()[0] if node2 is group else node2
            if all(type(n) in (cpp.FusedSchedulerNode, cpp.SchedulerNode) for n in (last, first)):
                wanted = group.outer_loop_fusion_depth
                variables1, variables2 = loop_vars(last)[0], loop_vars(first)[0]
                if wanted <= min(len(variables1), len(variables2)) and (
                    variables1[:wanted] == variables2[:wanted]
                ):
                    depth = wanted
        if depth:
            for node in (node1, node2):
                outer = node.get_outer_nodes() if type(node) is outer_type else [node]
                if any(sum(map(len, loop_vars(n))) <= depth for n in outer):
                    return 0  # nothing to run inside the outer loop
        return depth

    def codegen_outer_loop_node(self: Any, node: Any) -> Any:
        hidden = []
        for member in node.get_nodes():
            for buffer in member.get_outputs():
                strong = [user for user in buffer.users if not user.is_weak]
                if len(strong) != len(buffer.users):
                    hidden.append((buffer, buffer.users))
                    buffer.users = strong
        try:
            return chosen_codegen(self, node)
        finally:
            for buffer, users in hidden:
                buffer.users = users

    scheduling._get_outer_loop_fusion_depth = fusion_depth
    scheduling.codegen_outer_loop_node = codegen_outer_loop_node
    try:
        yield
    finally:
        scheduling._get_outer_loop_fusion_depth = chosen_depth
        scheduling.codegen_outer_loop_node = chosen_codegen


def _no_layout_check(*args: Any, **kwargs: Any) -> None:
    return None


def _element_count_check(tensor: Any, size: Sequence[int], *args: Any, **kwargs: Any) -> None:
    """The generated module's layout check, as the caller's tensors need it: contiguous,
    of the traced element count (N-D tensors are indexed linearly).

    Raises a Python ``AssertionError``, which the self-check before a wrapper is
    trusted catches: Inductor's own ``assert_size_stride`` failing inside the
    generated ``call`` aborts the process (seen with a recorded input plan whose
    arguments were swapped).
    """
    count = 1
    for extent in size:
        count *= int(extent)
    if not (isinstance(tensor, Tensor) and tensor.numel() == count and tensor.is_contiguous()):
        raise AssertionError(
            f"the kernel expects a contiguous tensor of {count} elements, got "
            f"{getattr(tensor, 'shape', type(tensor).__name__)}"
        )


def _set_layout_check(wrapper: Any, check: Callable[..., None]) -> None:
    """Make ``check`` the generated module's ``assert_size_stride``."""
    module_globals = _globals(wrapper)
    if "assert_size_stride" in module_globals:
        module_globals["assert_size_stride"] = check


def _check_element_counts(wrapper: Any) -> None:
    _set_layout_check(wrapper, _element_count_check)


def reuse_buffers(wrapper: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """``wrapper``, its CPU buffers kept between calls (per thread) instead of made anew.

    A generated module that makes buffers of its own (int8 state: a float32
    per block and moment for the block reductions; before
    :func:`blockwise_fusion`, three float32 temporaries per element)
    allocates them with ``empty_strided_cpu`` at every call; buffers of
    megabytes come from fresh pages each time, and the page faults cost more
    than the kernel (about 45,000 a step, most of an int8 step's time on 16.8M
    parameters, with the three-per-element temporaries). Through the returned function, the n-th allocation of a
    call is a view of this thread's n-th kept buffer, grown when a call needs
    more. Safe because the module's buffers are temporaries (the bucket
    functions return nothing) and a call has finished with them when it
    returns; a call on another path (through Dynamo) allocates as before.
    Relies on the module's global ``empty_strided_cpu(size, stride, dtype)``.
    """
    module_globals = _globals(wrapper)
    allocate = module_globals.get("empty_strided_cpu")
    if allocate is None:
        return wrapper
    state = module_globals.get("_optlab_buffers")
    if state is None:
        state = module_globals["_optlab_buffers"] = threading.local()

        def kept(size: Sequence[int], stride: Sequence[int], dtype: torch.dtype) -> Tensor:
            pool = getattr(state, "pool", None)
            if pool is None:  # not a call through reuse_buffers
                return allocate(size, stride, dtype)
            index = state.index
            state.index += 1
            request = (size, stride, dtype)
            if index < len(pool) and pool[index][1] == request:
                return pool[index][2]  # the same view as last call (the usual case)
            extent = (
                1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else 0
            )
            base = pool[index][0] if index < len(pool) else None
            if base is None or base.dtype != dtype or base.numel() < extent:
                base = allocate((max(extent, 1),), (1,), dtype)
            entry = (base, request, base.as_strided(size, stride))
            if index < len(pool):
                pool[index] = entry
            else:
                pool.append(entry)
            return entry[2]

        module_globals["empty_strided_cpu"] = kept

    def call(args: list[Any]) -> Any:
        if getattr(state, "pool", None) is not None:  # re-entered: allocate as before
            return wrapper(args)
        state.pool = getattr(state, "buffers", None) or []
        state.index = 0
        try:
            return wrapper(args)
        finally:
            state.buffers, state.pool = state.pool, None

    return call


def trust_layout(wrapper: Any) -> None:
    """Drop a checked wrapper's layout checks (about 10 us a bucket on 2 cores)."""
    _set_layout_check(wrapper, _no_layout_check)


def _globals(function: Any) -> dict[str, Any]:
    """The generated module's namespace, from its ``call`` (a function or a bound method)."""
    return getattr(getattr(function, "__func__", function), "__globals__", {})


def _input_plan(graph: torch.fx.GraphModule, names: Sequence[str]) -> list[tuple[int, bool]] | None:
    """Map the graph's inputs to (argument index, is-its-element-count); ``None`` if one is neither."""
    plan = []
    for node in graph.graph.nodes:
        if node.op != "placeholder":
            continue
        source = getattr(node.meta.get("grapharg"), "source", None)
        base, is_size = source, False
        if hasattr(source, "prop") and hasattr(source, "base"):
            if getattr(source.prop, "name", None) != "SIZE" or getattr(source, "idx", None) != 0:
                return None
            base, is_size = source.base, True
        name = getattr(base, "local_name", None)
        if name not in names:
            return None
        plan.append((names.index(name), is_size))
    return plan


# ----- calling the generated code ---------------------------------------------


def _generated_call(function: Callable[..., Any], items: Sequence[str], as_list: bool) -> Runner:
    """``lambda t, h: function(*items)`` (or ``function([*items])``), generated once:
    a bucket then costs one Python call and one argument display."""
    arguments = ", ".join(items)
    source = f"lambda t, h: f([{arguments}])" if as_list else f"lambda t, h: f({arguments})"
    return eval(source, {"f": function})  # noqa: S307 - items are generated or checked by the caller


def wrapper_runner(
    wrapper: Callable[[list[Any]], Any],
    plan: Sequence[tuple[int, bool]],
    scalars_index: int,
    flat: bool,
    rows: Mapping[int, int] | None = None,
) -> Runner:
    """A runner calling Inductor's generated ``call`` on a bucket.

    Relies on ``call`` taking one list: the graph's inputs in placeholder
    order, an element count as a Python int. ``scalars_index`` is the scalar
    vector's argument index; ``flat`` passes 1-D views of the tensors.
    ``rows`` maps the arguments compiled as rows ``(n, width)`` to their
    ``width``: they are passed as they come (contiguous, any shape) with ``n``
    as ``numel() // width`` (the code indexes them linearly either way).
    """
    view = ".view(-1)" if flat else ""
    rows = rows or {}

    def count(index: int) -> str:
        return f".numel() // {rows[index]}" if index in rows else ".numel()"

    items = [
        ("h" if index == scalars_index else f"t[{index}]")
        + (count(index) if is_size else "" if index == scalars_index else view)
        for index, is_size in plan
    ]
    return _generated_call(wrapper, items, as_list=True)


def cpp_kernel_call(
    wrapper: Callable[[list[Any]], Any],
    run: Callable[[], Any],
    scratch: Sequence[Tensor],
    sizes: Sequence[int],
    width: int,
) -> tuple[Callable[..., Any], list[str]] | None:
    """The one C++ kernel the generated wrapper calls, and its arguments as runner expressions.

    ``run()`` calls the wrapper once on ``scratch``: ``width`` tensors per set,
    set ``i`` 1-D of ``sizes[i]`` elements (all distinct), then GradScaler's
    tensors if any, then the scalar vector. Returns ``None`` where the wrapper
    does not call exactly one kernel, once, with only these tensors and
    sizes; raises what ``run`` raises. Relies on the generated module holding
    the kernel as its one global named ``cpp_fused_*``, looked up at each
    call (so a recorder can stand in for it), and on the kernel taking the
    tensors themselves and element counts as Python ints.
    """
    module_globals = _globals(wrapper)
    names = [name for name in module_globals if name.startswith("cpp_fused_")]
    if len(names) != 1:
        return None
    name = names[0]
    kernel = module_globals[name]
    recorded: list[tuple[Any, ...]] = []

    def record(*args: Any) -> Any:
        recorded.append(args)
        return kernel(*args)

    module_globals[name] = record
    try:
        run()
    finally:
        module_globals[name] = kernel
    if len(recorded) != 1:
        return None
    position = {id(tensor): index for index, tensor in enumerate(scratch)}
    # Other element counts (e.g. an int8 moment's block scales) by the first tensor that has it.
    numels: dict[int, int] = {}
    for index, tensor in enumerate(scratch[:-1]):
        numels.setdefault(tensor.numel(), index)
    items = []
    for value in recorded[0]:
        if isinstance(value, Tensor) and id(value) in position:
            index = position[id(value)]
            items.append("h" if index == len(scratch) - 1 else f"t[{index}]")
        elif type(value) is int and value in sizes:
            items.append(f"t[{list(sizes).index(value) * width}].numel()")
        elif type(value) is int and value > 1 and value in numels:
            items.append(f"t[{numels[value]}].numel()")
        else:
            return None
    return kernel, items


def cpp_runner(kernel: Callable[..., Any], items: Sequence[str]) -> Runner:
    """A runner calling a C++ kernel with the argument expressions of :func:`cpp_kernel_call`."""
    return _generated_call(kernel, items, as_list=False)


def wrapper_file(wrapper: Callable[[list[Any]], Any]) -> str | None:
    """The file of the generated module whose ``call`` is ``wrapper`` (in Inductor's cache)."""
    path = _globals(wrapper).get("__file__")
    return path if isinstance(path, str) and os.path.isfile(path) else None


def load_wrapper(path: str) -> Callable[[list[Any]], Any]:
    """The ``call`` of a generated module from an earlier process, checking element counts.

    Imports Inductor (seconds) but traces nothing: the module compiles its
    C++ kernels at import, which Inductor's cache turns into loading them.
    Relies on ``torch._inductor.codecache.PyCodeCache.load_by_key_path(key,
    path)`` importing such a module, and on the module's ``call`` and
    ``assert_size_stride`` globals (as :func:`compile_function`): its layout
    checks are :func:`_element_count_check` until :func:`trust_layout`.
    """
    from torch._inductor.codecache import PyCodeCache

    module = PyCodeCache.load_by_key_path(Path(path).stem, path)
    wrapper = module.call
    _check_element_counts(wrapper)
    return wrapper


def cpp_library(kernel: Callable[..., Any]) -> tuple[str, str] | None:
    """``(file, module name)`` of the compiled extension module holding ``kernel``, if known.

    Relies on the kernel being a builtin function of that module (its ``__self__``).
    """
    module = getattr(kernel, "__self__", None)
    library, name = getattr(module, "__file__", None), getattr(module, "__name__", None)
    return (library, name) if library and name else None


def load_cpp_kernel(module_name: str, library: str) -> Callable[..., Any]:
    """The ``kernel`` function of a compiled module from an earlier process, without Inductor.

    Relies on the module's initialisation reading the address of
    ``torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr`` from
    ``$_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR`` (as Inductor's loader sets
    it), and on the module exposing its entry point as ``kernel``.
    """
    address = torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr
    os.environ["_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"] = str(address)
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    return module.kernel
