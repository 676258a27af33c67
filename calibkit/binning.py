"""Hard binning of probabilities into per-bin statistics: the one public entry.

:func:`bin_statistics` bins one image and picks the implementation:

* torch (:mod:`calibkit.binning_torch`) for torch tensors, for a device other than
  the CPU, or when ``backend="torch"`` is asked for;
* else the compiled kernel (:mod:`calibkit._kernels`, numba) when numba is
  installed, it bins ``n_bins`` exactly and the targets are binary: ``bool``, or
  any integer or float32/float64 array whose values are all 0 or 1 (a one-hot
  ``uint8`` map, ``y.float()``, ...);
* else the numpy reference path here, which also takes real-valued (soft) targets.

Every path gives the same bins. :func:`resolve_backend` and :func:`class_binner`
make the same choice for a whole evaluation. The bins themselves (edges,
:class:`BinStats`) live in :mod:`calibkit.bins` and are re-exported here.

Shapes and rules follow SPEC.md §1 and match ``monai.metrics.CalibrationErrorMetric``
bit for bit:

* ``M`` bins with edges ``torch.linspace(0, 1 + eps, M + 1)`` in float32
  (:func:`bin_edges` reproduces torch's values exactly; numpy's ``linspace`` differs);
* bins are closed on the right: voxel ``i`` goes to bin ``k`` with
  ``e_k < p_i <= e_{k+1}``; bin 0 also takes ``p <= e_1`` and bin ``M - 1``
  everything above ``e_{M-1}``;
* probabilities are cast to float32 before binning, sums accumulate in float64.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from calibkit.bins import DEFAULT_N_BINS, BinStats, bin_edges, check_n_bins
from calibkit.errors import CalibkitError

if TYPE_CHECKING:
    import torch

    from calibkit._kernels import KernelBuild

__all__ = [
    "CHUNK_VOXELS",
    "DEFAULT_N_BINS",
    "Backend",
    "BinStats",
    "ClassBinner",
    "Kernel",
    "LabelMapBins",
    "assign_bins",
    "bin_codes_with_label_map",
    "bin_edges",
    "bin_statistics",
    "bin_with_label_map",
    "class_binner",
    "coded_channel_sum_error",
    "coded_pass_applies",
    "compile_kernels",
    "compiled_kernel_applies",
    "dense_values",
    "flatten_alike",
    "label_map_pass_applies",
    "numba_available",
    "resolve_backend",
]

# Voxels processed per step: temporaries stay in the L2 cache (2x faster than 1 << 18)
# and memory stays bounded whatever the volume size.
CHUNK_VOXELS = 1 << 16


def assign_bins(probabilities: npt.ArrayLike, n_bins: int = DEFAULT_N_BINS) -> npt.NDArray[np.intp]:
    """Bin index of every probability, by the right-closed rule (reference implementation).

    Args:
        probabilities: values of any shape; cast to float32 first.
        n_bins: number of bins ``M``.

    Returns:
        Integer bin indices in ``[0, M - 1]``, same shape as the input.

    Example:
        >>> assign_bins([0.0, 0.05, 0.0500001, 0.5, 1.0], n_bins=20).tolist()
        [0, 0, 1, 9, 19]
    """
    values = np.asarray(probabilities, dtype=np.float32)
    inner_edges = bin_edges(n_bins)[1:-1]
    # side="left" counts the inner edges strictly below p: e_k < p <= e_{k+1} -> k.
    return np.searchsorted(inner_edges, values, side="left")


Kernel = Literal["auto", "numba", "numpy"]
Backend = Literal["auto", "numpy", "torch"]

#: A function binning one class map ``(*spatial)`` against its targets.
ClassBinner = Callable[[npt.NDArray[np.float32], npt.NDArray[np.bool_]], BinStats]

_NEEDS_BINARY = (
    "the numba kernel needs boolean targets (bool, or integers or floats that are all "
    "0 or 1); use kernel='numpy'"
)


def bin_statistics(
    probabilities: npt.ArrayLike | torch.Tensor,
    targets: npt.ArrayLike | torch.Tensor,
    n_bins: int = DEFAULT_N_BINS,
    *,
    kernel: Kernel = "auto",
    backend: Backend = "auto",
    device: str | torch.device | None = None,
) -> BinStats:
    """Per-class bin statistics of one image, with the fastest implementation that applies.

    Three implementations give the same bins: torch (CPU or CUDA), a compiled CPU
    kernel (numba, one pass over the probabilities, parallel over chunks) and the
    numpy reference. Memory stays bounded on the CPU: no float64 copy of the volume
    is made.

    Binary targets take the compiled kernel whatever their dtype: ``bool``, and any
    integer, float32 or float64 array whose values are all exactly 0 or 1 (read
    chunk by chunk; no converted copy of the volume is made). Counts and ``sum_y``
    are then exactly those of the same targets as ``bool``. Any other value (a soft
    target such as 0.3, a 2, a NaN) sends the whole image to the numpy reference
    path, which averages real targets; a NaN target there makes ``sum_y`` of its
    voxel's bin NaN. float16 and non-native byte orders also take the reference path.

    Args:
        probabilities: ``(C, *spatial)`` probabilities (any float dtype, cast to
            float32; values outside [0, 1] land in the first / last bin), a numpy
            array or a torch tensor.
        targets: ``(C, *spatial)`` targets of the same shape, binary (bool or 0/1)
            or, in general, real values whose per-bin mean is the observed frequency.
        n_bins: number of bins ``M``.
        kernel: the CPU kernel: ``"numba"``, ``"numpy"`` (the reference), or
            ``"auto"`` (numba when installed, ``n_bins`` is supported and the targets
            are binary). Naming one also means the CPU: torch tensors are read as
            numpy arrays.
        backend: ``"numpy"`` (the CPU kernels above), ``"torch"``, or ``"auto"``:
            torch for tensor inputs or a ``device`` other than the CPU, else numpy.
        device: torch device for the torch backend. None: the device of tensor
            inputs; for numpy inputs CUDA when available, else the CPU.

    Returns:
        :class:`BinStats` (numpy arrays) of shape ``(C, M)``.

    Raises:
        ValueError: unequal shapes, no class axis, a bad ``n_bins``, ``kernel`` or
            ``backend``, or ``kernel="numba"`` with targets it cannot take.

    Example:
        >>> stats = bin_statistics([[0.7, 0.3, 0.1, 0.9]], [[1, 0, 0, 1]], n_bins=5)
        >>> stats.count.tolist()
        [[1, 1, 0, 1, 1]]
    """
    check_n_bins(n_bins)
    if kernel not in ("auto", "numba", "numpy"):
        raise ValueError(f"kernel must be 'auto', 'numba' or 'numpy', got {kernel!r}")
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "torch" and kernel != "auto":
        raise ValueError(f"kernel={kernel!r} is a CPU kernel of the numpy backend, not torch")
    on_torch = backend == "torch" or (
        backend == "auto"
        and kernel == "auto"
        and (_is_tensor(probabilities) or _is_tensor(targets) or not _is_cpu(device))
    )
    if on_torch:
        return _bin_with_torch(probabilities, targets, n_bins, device)
    probs = np.asarray(probabilities)
    truth = np.asarray(targets)
    if probs.shape != truth.shape:
        raise ValueError(f"probabilities {probs.shape} and targets {truth.shape} differ in shape")
    if probs.ndim < 1:
        raise ValueError("probabilities need a leading class axis: (C, *spatial)")
    n_classes = probs.shape[0]
    flat = [flatten_alike(probs[c], truth[c]) for c in range(n_classes)]
    compiled = _compiled_kernel(kernel, truth.dtype, n_bins)
    if compiled is not None:
        stats = _bin_compiled(compiled, flat, n_bins)
        if stats is not None:
            return stats
        if kernel == "numba":
            raise ValueError(_NEEDS_BINARY)
    count = np.zeros((n_classes, n_bins), dtype=np.int64)
    sum_p = np.zeros((n_classes, n_bins), dtype=np.float64)
    sum_y = np.zeros((n_classes, n_bins), dtype=np.float64)
    binner = _ChunkBinner(n_bins)
    for c, (flat_p, flat_y) in enumerate(flat):
        for start in range(0, flat_p.size, CHUNK_VOXELS):
            binner.add(
                flat_p[start : start + CHUNK_VOXELS],
                flat_y[start : start + CHUNK_VOXELS],
                count[c],
                sum_p[c],
                sum_y[c],
            )
    return BinStats(count, sum_p, sum_y)


def _bin_compiled(
    compiled: Callable[..., Any],
    flat: list[tuple[npt.NDArray[Any], npt.NDArray[Any]]],
    n_bins: int,
) -> BinStats | None:
    """Bins of the flat class maps with a compiled kernel; None if a target is not 0 or 1."""
    n_classes = len(flat)
    p_rows, y_rows = _as_rows([p for p, _ in flat]), _as_rows([y for _, y in flat])
    if p_rows is not None and y_rows is not None and p_rows.dtype == np.float32:
        row_results = compiled(p_rows, y_rows, n_bins)  # one launch for all classes
    else:  # one class at a time, so that at most one class is ever copied
        row_results = []
        for p, y in flat:
            one = compiled(
                np.ascontiguousarray(p, dtype=np.float32)[None],
                np.ascontiguousarray(y)[None],
                n_bins,
            )
            if one is None:
                return None
            row_results.append(one[0])
    if row_results is None:
        return None
    count = np.zeros((n_classes, n_bins), dtype=np.int64)
    sum_p = np.zeros((n_classes, n_bins), dtype=np.float64)
    sum_y = np.zeros((n_classes, n_bins), dtype=np.float64)
    for c, result in enumerate(row_results):
        count[c], sum_p[c], sum_y[c] = result.count, result.sum_p, result.sum_y
    return BinStats(count, sum_p, sum_y)


def resolve_backend(backend: str, device: str | None) -> Literal["numpy", "torch"]:
    """The backend a whole evaluation uses: ``auto`` picks torch only when CUDA is usable.

    Args:
        backend: ``"numpy"``, ``"torch"`` or ``"auto"``.
        device: the torch device asked for, or None. With ``auto``, a device other
            than ``"cpu"`` means torch.

    Returns:
        ``"numpy"`` (the CPU kernels of :func:`bin_statistics`) or ``"torch"``.

    Raises:
        CalibkitError: torch is asked for (or implied by ``device``) but not installed.
        ValueError: ``backend`` is none of the three.
    """
    if backend == "numpy":
        return "numpy"
    if backend == "torch":
        _require_torch()
        return "torch"
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if device is not None and device != "cpu":
        _require_torch()
        return "torch"
    if device is None and _cuda_may_exist():
        try:
            import torch
        except ImportError:
            return "numpy"
        if torch.cuda.is_available():
            return "torch"
    return "numpy"


def class_binner(
    n_bins: int = DEFAULT_N_BINS, backend: str = "auto", device: str | None = None
) -> ClassBinner:
    """A function binning one class map ``(*spatial)``, on the backend chosen once here.

    Args:
        n_bins: number of bins ``M``.
        backend: ``"numpy"``, ``"torch"`` or ``"auto"``, as for :func:`resolve_backend`.
        device: torch device for the torch backend; None: CUDA when available, else
            the CPU.

    Returns:
        ``bin_one(p, y) -> BinStats`` of shape ``(M,)`` for ``p`` and ``y`` of one
        shape. On torch it reuses its buffers from call to call: one thread at a time.

    Raises:
        CalibkitError: torch is asked for but not installed.
    """
    if resolve_backend(backend, device) == "numpy":
        return lambda p, y: bin_statistics(p[None], y[None], n_bins, backend="numpy")[0]
    # Deferred: torch costs seconds to import, and `import calibkit` stays light
    import torch

    from calibkit.binning_torch import TorchBinner

    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # One binner for every class: its buffers serve them all.
    binner = TorchBinner(n_bins, chosen)
    return lambda p, y: binner(_as_tensor(p[None]), _as_tensor(y[None]))[0]


def compiled_kernel_applies(
    n_bins: int = DEFAULT_N_BINS, backend: str = "auto", device: str | None = None
) -> bool:
    """Whether binary targets are binned by the compiled kernel on this backend.

    True when numba is installed, ``backend`` and ``device`` resolve to numpy
    (:func:`resolve_backend`) and the kernel bins ``n_bins`` exactly. Imports the
    kernel (numba) only when the other conditions hold.

    Raises:
        CalibkitError: torch is asked for but not installed.
    """
    if not numba_available() or resolve_backend(backend, device) != "numpy":
        return False
    # Deferred: numba costs ~0.5 s to import
    from calibkit import _kernels

    return _kernels.supports(n_bins)


def label_map_pass_applies(
    probabilities: npt.NDArray[Any],
    label: npt.NDArray[Any],
    n_bins: int = DEFAULT_N_BINS,
    backend: str = "auto",
    device: str | None = None,
) -> bool:
    """Whether :func:`bin_with_label_map` can bin a case in one compiled pass.

    It needs the compiled kernel on this backend (:func:`compiled_kernel_applies`),
    float32 probabilities and a native-order integer label map with values in
    ``[0, 64)`` (each class's targets come from a bit mask of its label values).
    """
    return probabilities.dtype == np.float32 and _label_map_fits(label, n_bins, backend, device)


def _label_map_fits(label: npt.NDArray[Any], n_bins: int, backend: str, device: str | None) -> bool:
    """A native-order integer label map with values in ``[0, 64)``, and the compiled kernel."""
    if (
        label.dtype.kind not in "iu"
        or not label.dtype.isnative
        or label.size == 0
        or not compiled_kernel_applies(n_bins, backend, device)
    ):
        return False
    # Deferred: numba costs ~0.5 s to import
    from calibkit._kernels import TARGET_BITS

    return 0 <= int(label.min()) and int(label.max()) < TARGET_BITS


def coded_pass_applies(
    codes: npt.NDArray[Any],
    label: npt.NDArray[Any],
    n_bins: int = DEFAULT_N_BINS,
    backend: str = "auto",
    device: str | None = None,
) -> bool:
    """Whether :func:`bin_codes_with_label_map` can bin a map stored as codes ``(C, *spatial)``.

    What :func:`label_map_pass_applies` needs of the label map (``(*spatial)``, or a
    multi-label ``(L, *spatial)``), uint8 / uint16 codes, and one voxel order in
    memory (C or Fortran) for every channel of the codes and of the label.
    """
    if codes.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)) or codes.ndim < 2:
        return False
    label_maps = list(label) if label.ndim == codes.ndim else [label]
    if _voxel_order([*codes, *label_maps]) is None:
        return False
    return _label_map_fits(label, n_bins, backend, device)


def _voxel_order(volumes: list[npt.NDArray[Any]]) -> Literal["C", "F"] | None:
    """The memory order every volume is contiguous in ("F" first: NIfTI's), or None."""
    for order, flag in (("F", "f_contiguous"), ("C", "c_contiguous")):
        if all(getattr(volume.flags, flag) for volume in volumes):
            return order  # type: ignore[return-value]
    return None


@dataclass(frozen=True)
class LabelMapBins:
    """Bins of one class map whose targets came from label values, and its Dice counts.

    Attributes:
        stats: the class's bins, shape ``(M,)``.
        predicted: voxels with ``p >= threshold``.
        intersection: of those, the voxels whose label is one of the class's.
    """

    stats: BinStats
    predicted: int
    intersection: int


def bin_with_label_map(
    probabilities: npt.NDArray[np.float32],
    label: npt.NDArray[np.integer],
    n_bins: int,
    *,
    target_labels: tuple[int, ...],
    threshold: float,
) -> LabelMapBins:
    """Bins of one class map ``(*spatial)``, its targets and Dice counts in one pass.

    The target of a voxel is ``label in target_labels``; nothing of the size of the
    volume is allocated for it. Use where :func:`label_map_pass_applies` holds; the
    result equals :func:`bin_statistics` of ``p`` against ``isin(label, target_labels)``.
    """
    # Deferred: numba costs ~0.5 s to import
    from calibkit._kernels import bin_flat

    p, codes = flatten_alike(probabilities, label)
    result = bin_flat(
        np.ascontiguousarray(p, dtype=np.float32),
        np.ascontiguousarray(codes),
        n_bins,
        target_labels=target_labels,
        threshold=threshold,
    )
    return LabelMapBins(
        stats=BinStats(result.count, result.sum_p, result.sum_y),
        predicted=result.predicted,
        intersection=result.intersection,
    )


def bin_codes_with_label_map(
    codes: npt.NDArray[np.unsignedinteger],
    code_values: npt.NDArray[np.float32],
    channels: tuple[int, ...],
    label: npt.NDArray[np.integer],
    n_bins: int,
    *,
    target_labels: tuple[int, ...],
    threshold: float,
) -> LabelMapBins:
    """:func:`bin_with_label_map` of one class of a map stored as codes, without decoding it.

    ``codes`` ``(C, *spatial)`` holds uint8 / uint16 codes and ``code_values[k]`` the
    float32 probability of code ``k``; the class's probability is its one channel's
    value or its channels' values summed and clipped to 1, as
    :func:`calibkit.classes.class_probability` makes it from the decoded map. Each
    chunk of probabilities is made from the codes in a buffer the size of the cache,
    so no float32 copy of the volume exists. Use where :func:`coded_pass_applies`
    holds; the result equals :func:`bin_with_label_map` of the decoded class map bit
    for bit (counts, sums and Dice counts).
    """
    # Deferred: numba costs ~0.5 s to import
    from calibkit._kernels import bin_coded_class

    rows, flat_label = _code_rows(codes, label)
    result = bin_coded_class(
        rows,
        code_values,
        channels,
        flat_label,
        n_bins,
        target_labels=target_labels,
        threshold=threshold,
    )
    return LabelMapBins(
        stats=BinStats(result.count, result.sum_p, result.sum_y),
        predicted=result.predicted,
        intersection=result.intersection,
    )


def coded_channel_sum_error(
    codes: npt.NDArray[np.unsignedinteger], code_values: npt.NDArray[np.float32]
) -> float:
    """Largest ``|sum of the channels - 1|`` over the voxels of a map stored as codes.

    The channels' float32 values are added in channel order, as numpy's float32
    ``sum(axis=0)`` of the decoded ``(C, *spatial)`` map adds them. Where
    :func:`coded_pass_applies` holds.
    """
    # Deferred: numba costs ~0.5 s to import
    from calibkit._kernels import coded_sum_error

    rows, _ = _code_rows(codes, codes[0])
    return coded_sum_error(rows, code_values)


def _code_rows(
    codes: npt.NDArray[Any], label: npt.NDArray[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """The channels of ``codes`` as rows ``(C, voxels)`` and the flat label, in one voxel order."""
    order = _voxel_order([*codes, label]) or "C"
    flat = [channel.ravel(order=order) for channel in codes]
    rows = _as_rows(flat)
    if rows is None:  # channels in separate buffers: one copy of the (small) codes
        rows = np.stack(flat)
    return rows, label.ravel(order=order)


def _cuda_may_exist() -> bool:
    # Cheap check first: importing torch costs seconds on machines that cannot use it.
    import importlib.util

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        visible not in ("", "-1")
        and os.path.exists("/proc/driver/nvidia")
        and importlib.util.find_spec("torch") is not None
    )


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CalibkitError(
            "the torch backend needs PyTorch: pip install torch (or use --backend numpy)"
        ) from None


def _is_tensor(value: object) -> bool:
    """Whether ``value`` is a torch tensor (without importing torch: no torch, no tensor)."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(value, torch_module.Tensor)


def _is_cpu(device: str | torch.device | None) -> bool:
    return device is None or str(device) == "cpu"


def _bin_with_torch(
    probabilities: npt.ArrayLike | torch.Tensor,
    targets: npt.ArrayLike | torch.Tensor,
    n_bins: int,
    device: str | torch.device | None,
) -> BinStats:
    """:func:`calibkit.binning_torch.bin_statistics_torch` of numpy or torch inputs."""
    _require_torch()
    # Deferred: torch costs seconds to import, and `import calibkit` stays light
    import torch

    from calibkit.binning_torch import bin_statistics_torch

    if device is not None:
        chosen = torch.device(device)
    elif isinstance(probabilities, torch.Tensor):
        chosen = probabilities.device
    else:
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def on_device(values: npt.ArrayLike | torch.Tensor) -> torch.Tensor:
        if isinstance(values, torch.Tensor):
            return values.to(chosen)
        return _as_tensor(np.asarray(values)).to(chosen)

    p, y = on_device(probabilities), on_device(targets)
    if p.ndim < 1:
        raise ValueError("probabilities need a leading class axis: (C, *spatial)")
    return bin_statistics_torch(p, y, n_bins)


def _as_tensor(array: npt.NDArray[Any]) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory in its own layout (a Fortran-ordered volume
    stays one), copied only where torch cannot share it (negative strides, a foreign
    byte order)."""
    # Deferred: torch costs seconds to import, and `import calibkit` stays light
    import torch

    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if any(stride < 0 or stride % array.itemsize for stride in array.strides):
        array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        # Binning only reads: a read-only array (a memory map) is safe to share.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _as_rows(rows: list[npt.NDArray[Any]]) -> npt.NDArray[Any] | None:
    """Contiguous flat rows at equal distances in one buffer as one ``(rows, n)`` view.

    The classes of a C- or Fortran-ordered volume are such rows; None for anything
    else, including no rows (no copy is made).
    """
    if not rows or not all(row.flags.c_contiguous for row in rows):
        return None
    first = rows[0]
    if len(rows) == 1:
        return first[None]
    if len({id(_root(row)) for row in rows}) != 1:
        return None  # separate allocations, even if evenly spaced
    step = rows[1].ctypes.data - first.ctypes.data
    if step == 0 or any(
        row.ctypes.data - first.ctypes.data != i * step for i, row in enumerate(rows)
    ):
        return None
    view: npt.NDArray[Any] = np.lib.stride_tricks.as_strided(
        first, shape=(len(rows), first.size), strides=(step, first.itemsize), writeable=False
    )
    return view


def _root(array: npt.NDArray[Any]) -> object:
    """The object that owns an array's memory (the end of its ``base`` chain)."""
    owner: object = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    return owner


def _compiled_kernel(
    kernel: Kernel, target_dtype: np.dtype[Any], n_bins: int
) -> Callable[..., Any] | None:
    """The compiled kernel for these targets when it should and can be used, else None.

    ``bin_rows`` for bool targets; ``bin_binary_rows`` (which returns None when a
    value is not 0 or 1) for the other dtypes it reads.
    """
    if kernel == "numpy":
        return None
    if target_dtype != np.bool_ and not _kernel_reads(target_dtype):
        if kernel == "numba":
            raise ValueError(_NEEDS_BINARY)
        return None
    if kernel == "auto" and not numba_available():
        return None
    # Deferred: numba costs ~0.5 s to import
    from calibkit import _kernels

    if not _kernels.supports(n_bins):
        if kernel == "numba":
            raise ValueError(f"the numba kernel supports up to about 400,000 bins, got {n_bins}")
        return None
    return _kernels.bin_rows if target_dtype == np.bool_ else _kernels.bin_binary_rows


def _kernel_reads(dtype: np.dtype[Any]) -> bool:
    """Whether the compiled kernel reads targets of ``dtype`` (checking each is 0 or 1)."""
    if not dtype.isnative:
        return False
    return dtype.kind in "iu" or (dtype.kind == "f" and dtype.itemsize in (4, 8))


def dense_values(array: npt.NDArray[Any]) -> npt.NDArray[Any] | None:
    """The values of ``array`` as a flat view in memory order, or None if that needs a copy."""
    order = np.argsort(array.strides)
    expected = array.itemsize
    for axis in order:
        if array.shape[axis] > 1 and array.strides[axis] != expected:
            return None
        expected *= array.shape[axis]
    flat: npt.NDArray[Any] = array.ravel(order="K")
    return flat


def compile_kernels() -> KernelBuild | None:
    """Compile every version of the compiled kernel into numba's disk cache, once per install.

    Without this, the first process that bins compiles the versions it needs (a
    few seconds) and caches them. ``calibkit prebuild`` runs it; a shared,
    read-only install should run it when it is installed, as the installing user:
    every user then reads the kernels from the package's own cache.

    Returns:
        How many versions were compiled now and found cached, and the cache
        folder; None when numba is not installed (the numpy path needs none).
    """
    if not numba_available():
        return None
    # Deferred: numba costs ~0.5 s to import
    from calibkit import _kernels

    return _kernels.compile_all()


@lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether the compiled kernel can be used (numba is installed)."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


class _ChunkBinner:
    """Bins one chunk at a time into accumulators; reuses its scratch buffers."""

    def __init__(self, n_bins: int) -> None:
        self.n_bins = n_bins
        edges = bin_edges(n_bins)
        self.lower = edges[:-1].copy()
        self.upper = edges[1:].copy()
        self.scale = np.float32(n_bins)

    def bin_index(self, p: npt.NDArray[np.float32]) -> npt.NDArray[np.intp]:
        # Multiply-and-correct: floor(p * M) is at most one bin off the exact rule;
        # one comparison against each neighbouring edge fixes it (the searchsorted
        # reference in assign_bins is about 3x slower).
        scaled = p * self.scale
        np.nan_to_num(scaled, copy=False, nan=0.0)
        np.clip(scaled, 0, self.n_bins - 1, out=scaled)
        index = scaled.astype(np.intp)
        index += p > self.upper[index]
        np.minimum(index, self.n_bins - 1, out=index)
        index -= p <= self.lower[index]
        np.maximum(index, 0, out=index)
        return index

    def add(
        self,
        p_chunk: npt.NDArray[np.generic],
        y_chunk: npt.NDArray[np.generic],
        count: npt.NDArray[np.int64],
        sum_p: npt.NDArray[np.float64],
        sum_y: npt.NDArray[np.float64],
    ) -> None:
        p = p_chunk.astype(np.float32, copy=False)
        index = self.bin_index(p)
        sum_p += np.bincount(index, weights=p, minlength=self.n_bins)
        if y_chunk.dtype == np.bool_:
            # One integer bincount on (bin, y) gives both counts and positives.
            pair_counts = np.bincount(index * 2 + y_chunk.view(np.uint8), minlength=2 * self.n_bins)
            positives = pair_counts[1::2]
            count += pair_counts[0::2] + positives
            sum_y += positives
        else:
            count += np.bincount(index, minlength=self.n_bins)
            sum_y += np.bincount(index, weights=y_chunk.astype(np.float64), minlength=self.n_bins)


def flatten_alike(
    p: npt.NDArray[np.generic], y: npt.NDArray[np.generic]
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.generic]]:
    """Both arrays flattened in the same voxel order, the one that avoids copies.

    NIfTI volumes arrive Fortran-ordered.
    """
    order: Literal["C", "F"] = (
        "F" if p.flags.f_contiguous and y.flags.f_contiguous and p.ndim > 1 else "C"
    )
    return p.ravel(order=order), y.ravel(order=order)
