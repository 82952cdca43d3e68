"""Forward Euler on linear evolution equations and its von Neumann stability analysis.

Gradient descent K <- K - dt * grad L(K) is forward Euler with time step dt = lr on the flow
dK/dt = -grad L(K). Near a point the flow is linear, du/dt = -A u + b, and one Euler step
multiplies the eigenmode of A with eigenvalue lambda by the amplification factor
1 - dt * lambda. The iteration is stable iff |1 - dt * lambda| <= 1 for every mode, which for
real lambda means 0 <= lambda <= 2 / dt. This module computes those quantities from an
operator given as a dense matrix, as a function (materialised column by column), or as a
convolution stencil (diagonalised by the FFT), and runs forward Euler to check them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def require_float64() -> None:
    """The theory is checked in float64; refuse to run silently in float32."""
    if jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise RuntimeError(
            "this analysis runs in float64 but x64 is off: call "
            "numerics.configure(numerics.DtypePolicy('fp64', 'fp64')) first, "
            "or wrap the call in `with jax.enable_x64(True):`"
        )


def amplification_factors(eigenvalues, dt: float) -> np.ndarray:
    """1 - dt * lambda: what one forward-Euler step does to each eigenmode of A."""
    return 1.0 - dt * np.asarray(eigenvalues)


def max_amplification(eigenvalues, dt: float) -> float:
    """max |1 - dt * lambda|: the per-step growth of the fastest-growing mode (the spectral
    radius of the forward-Euler step I - dt A, from A's eigenvalues; the spectral radius of
    a training step's linearisation is linearisation.spectral_radius)."""
    return float(np.max(np.abs(amplification_factors(eigenvalues, dt))))


def max_stable_dt(eigenvalues) -> float:
    """Largest dt with |1 - dt * lambda| <= 1 for all eigenvalues (complex allowed).

    |1 - dt lambda|^2 <= 1  <=>  dt <= 2 Re(lambda) / |lambda|^2. A mode with Re(lambda) < 0
    grows for every dt > 0, so the answer is 0; all-zero eigenvalues are neutral for any dt.
    """
    lam = np.asarray(eigenvalues, dtype=complex).ravel()
    if np.any(lam.real < 0):
        return 0.0
    nonzero = lam[lam != 0]
    if nonzero.size == 0:
        return float("inf")
    return float(np.min(2 * nonzero.real / np.abs(nonzero) ** 2))


def alpha_window(data_eigenvalues, dt: float) -> tuple[float, float]:
    """Weight decays alpha for which A = alpha * Id + D is stable under forward Euler with dt.

    With real data eigenvalues m_i the modes are lambda_i = alpha + m_i, and
    0 <= alpha + m_i <= 2/dt for all i gives alpha_min = -min m, alpha_max = 2/dt - max m.
    At either end one mode is neutral (factor +1 or -1). alpha_min > alpha_max means no
    weight decay makes this dt stable.
    """
    m = np.asarray(data_eigenvalues, dtype=float)
    return float(-np.min(m)), float(2.0 / dt - np.max(m))


def operator_matrix(apply: Callable, shape: tuple[int, ...], dtype=jnp.float64, chunk: int = 64):
    """Dense matrix of a linear map on arrays of `shape`, built from its action on unit vectors.

    Columns are computed `chunk` at a time with vmap, so memory stays bounded for operators
    (such as a pair of image-sized correlations) whose intermediates are large.
    """
    size = int(np.prod(shape))
    batched = jax.jit(jax.vmap(lambda e: apply(e.reshape(shape)).reshape(-1)))
    columns = []
    for start in range(0, size, chunk):
        stop = min(start + chunk, size)
        unit = jnp.asarray(np.eye(size)[start:stop], dtype)
        columns.append(np.asarray(batched(unit)))
    return np.concatenate(columns).T


def dense_eigenvalues(matrix) -> np.ndarray:
    """All eigenvalues of a dense operator (ascending and real when it is symmetric)."""
    matrix = np.asarray(matrix)
    if np.allclose(matrix, matrix.T, rtol=1e-12, atol=1e-12 * np.max(np.abs(matrix), initial=0)):
        return np.linalg.eigvalsh((matrix + matrix.T) / 2)
    return np.linalg.eigvals(matrix)


def fourier_eigenvalues(stencil, grid_shape: tuple[int, ...]) -> np.ndarray:
    """Eigenvalues of u -> stencil (*) u on a periodic grid: the FFT of the stencil.

    The stencil has odd sizes and is centred (stencil[c] multiplies u[x]); the Fourier mode
    exp(i w . x) is an eigenvector with eigenvalue sum_j stencil[c + j] exp(i w . j), the
    stencil's symbol sampled at the grid's wavenumbers w = 2 pi m / n.
    """
    stencil = np.asarray(stencil, dtype=float)
    if stencil.ndim != len(grid_shape) or any(s % 2 == 0 for s in stencil.shape):
        raise ValueError(
            f"stencil must have odd sizes and {len(grid_shape)} dims, got {stencil.shape}"
        )
    padded = np.zeros(grid_shape)
    padded[tuple(slice(0, s) for s in stencil.shape)] = stencil
    # Put the weight of u[x + j] at index j (mod n); then lambda(w) = n * ifft(padded)(w).
    padded = np.roll(
        padded, tuple(-(s // 2) for s in stencil.shape), axis=tuple(range(stencil.ndim))
    )
    return np.real_if_close(np.fft.ifftn(padded) * padded.size, tol=1000)


def fourier_diagonal(matrix, grid_shape: tuple[int, ...]) -> np.ndarray:
    """Rayleigh quotients f_w^H M f_w of a dense operator at every Fourier mode f_w of the grid.

    They are M's eigenvalues exactly when M is a periodic convolution (it commutes with
    shifts), and the usual von Neumann estimate of them otherwise.
    """
    n = int(np.prod(grid_shape))
    m = np.asarray(matrix).reshape(grid_shape + grid_shape)
    axes_in = tuple(range(len(grid_shape), 2 * len(grid_shape)))
    axes_out = tuple(range(len(grid_shape)))
    # F M F^H / n, diagonal entries: transform the input index with F^H and the output with F.
    transformed = np.fft.fftn(np.fft.ifftn(m, axes=axes_in), axes=axes_out)
    return np.real_if_close(np.diagonal(transformed.reshape(n, n)), tol=1000)


def forward_euler(rhs: Callable, u0, dt: float, steps: int, *args) -> np.ndarray:
    """u_{t+1} = u_t + dt * rhs(u_t, *args); returns all iterates (steps + 1, ...).

    A Python loop over one jitted step (rolled scans over convolution gradients ran 20-50x
    slower on this CPU: docs/architecture.md). Iterates after the first non-finite one are
    NaN: the run has blown up.
    """
    require_float64()
    step = jax.jit(lambda u, dt, *args: u + dt * rhs(u, *args))
    u = jnp.asarray(u0, jnp.float64)
    dt = jnp.asarray(dt, u.dtype)
    out = np.full((steps + 1,) + u.shape, np.nan, dtype=u.dtype)
    out[0] = np.asarray(u)
    for t in range(steps):
        u = step(u, dt, *args)
        out[t + 1] = np.asarray(u)
        if not np.all(np.isfinite(out[t + 1])):
            break
    return out


# observed_growth_rate compares the last step with the middle one: it needs two distinct steps
# at least one step apart, i.e. three steps (four iterates).
MIN_GROWTH_STEPS = 3


def observed_growth_rate(iterates: np.ndarray) -> float:
    """Per-step growth of |u_{t+1} - u_t| over the second half of a linear iteration.

    For u_{t+1} = (I - dt A) u_t + dt b the steps obey d_{t+1} = (I - dt A) d_t, so this
    estimates the spectral radius max |1 - dt lambda| without knowing the fixed point.
    Needs MIN_GROWTH_STEPS steps (ValueError otherwise). A run that blew up (non-finite
    iterates, as forward_euler pads them) is measured over its finite steps; with fewer than
    MIN_GROWTH_STEPS of those it grew too fast to measure, and the rate is inf.
    """
    iterates = np.asarray(iterates)
    if iterates.ndim < 1 or len(iterates) < MIN_GROWTH_STEPS + 1:
        raise ValueError(
            f"observed_growth_rate needs at least {MIN_GROWTH_STEPS} steps "
            f"({MIN_GROWTH_STEPS + 1} iterates), got {len(iterates) if iterates.ndim else 0} "
            "iterates"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        steps = np.sqrt(np.sum(np.diff(iterates, axis=0) ** 2, axis=tuple(range(1, iterates.ndim))))
    steps = steps[np.isfinite(steps)]
    if len(steps) < MIN_GROWTH_STEPS:
        return float("inf")
    half = len(steps) // 2
    return float((steps[-1] / steps[half]) ** (1.0 / (len(steps) - 1 - half)))


# --- The 1-D heat equation of the paper's Figure 1 -------------------------------------------

# -u_xx on a grid with dx = 1: the stencil of A in du/dt = -A u.
NEG_LAPLACIAN_1D = np.array([-1.0, 2.0, -1.0])


def heat_initial_condition(points: int = 31) -> np.ndarray:
    """The paper's tent u0[i] = i/10 for i < 15, else (30 - i)/10 (zero at both ends for 31)."""
    i = np.arange(points, dtype=np.float64)
    middle = (points - 1) // 2
    return np.where(i < middle, i, (points - 1) - i) / 10.0


def heat_rhs(u):
    """u_xx with dx = 1 and fixed (Dirichlet) zero ends: the ends never move."""
    interior = u[:-2] - 2 * u[1:-1] + u[2:]
    return jnp.zeros_like(u).at[1:-1].set(interior)


def heat_dirichlet_matrix(points: int = 31) -> np.ndarray:
    """A = -d^2/dx^2 on the interior points of a grid with fixed zero ends."""
    n = points - 2
    return 2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)


def heat_von_neumann_dt(grid_points: int = 64) -> float:
    """Von Neumann bound for u_t = u_xx: the symbol 4 sin^2(w/2) peaks at 4 (w = pi), dt <= 1/2.

    An even periodic grid contains the Nyquist mode w = pi, so the bound is exactly 1/2.
    """
    return max_stable_dt(fourier_eigenvalues(NEG_LAPLACIAN_1D, (grid_points,)))


def heat_dirichlet_dt(points: int = 31) -> float:
    """Exact bound for the finite grid with fixed ends (slightly above 1/2: w = pi is absent)."""
    return max_stable_dt(dense_eigenvalues(heat_dirichlet_matrix(points)))
