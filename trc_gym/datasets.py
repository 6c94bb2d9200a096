"""Expert demonstration datasets: generate, save (atomically) and load (validated).

A dataset is one ``.npz`` file holding, for ``S`` samples of an env with ``n`` states, ``m``
controls and horizon ``N``:

    initial_states  [S, n]       target_states  [S, n]
    controls        [S, N, m]    states         [S, N+1, n]    costs  [S]

and ``metadata``: a JSON string with the env id, seed, sample count, shapes and package version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from trc_gym.checks import check_number
from trc_gym.devices import resolve_device
from trc_gym.envs import make_expert, make_problem
from trc_gym.experts.base import CHUNK_SIZE  # a shard is made of whole chunks of the full run
from trc_gym.files import atomic_write

ARRAYS = ("initial_states", "target_states", "controls", "states", "costs")


@dataclass
class DataConfig:
    """Demonstrations: every default of `generate`, ``trc generate`` and the main job."""

    num_samples: int = 10_000
    """Expert plans to generate."""
    seed: int = 0
    """Seed of the sampled starts and targets (the test starts use their own)."""
    workers: int | None = None
    """Processes for slow (per-start) experts; None: every core."""
    trajectory_starts: float = 0.0
    """Share of the samples that start from a state on another sample's expert trajectory (at
    a random step): the states a planner replanning at every step (MPC) meets; 0: every start
    is drawn from the start box."""
    device: str = "cpu"
    """Where the experts' torch parts run (iLQR's trajectories, derivatives and line search;
    its backward pass is numpy): cpu (the default: the solvers are tuned for it), auto, cuda
    or cuda:K. On CUDA the chunks are solved in this process, one after another."""
    margin: float = 0.0
    """Clearance the expert's plans keep from every hard state constraint (`Expert.with_margin`;
    e.g. metres from each obstacle): room for a cloned planner's errors; 0: the optimal plans,
    which graze the constraints."""

    def __post_init__(self) -> None:
        resolve_device(self.device, "DataConfig.device")
        check_number(self.num_samples, "num_samples", minimum=1, integer=True)
        check_number(self.seed, "seed", minimum=0, integer=True)
        check_number(self.trajectory_starts, "trajectory_starts", minimum=0, maximum=0.9)
        check_number(self.margin, "margin", minimum=0)
        if self.workers is not None:
            check_number(self.workers, "workers", minimum=1, integer=True)


@dataclass
class Demonstrations:
    initial_states: np.ndarray
    target_states: np.ndarray
    controls: np.ndarray
    states: np.ndarray
    costs: np.ndarray
    metadata: dict

    @classmethod
    def of_plans(cls, problem, x0: np.ndarray, target: np.ndarray, controls: np.ndarray,
                 metadata: dict) -> Demonstrations:
        """The demonstrations of plans ``controls [B, N, m]`` from ``x0, target [B, n]``, with
        their states and costs computed by ``problem``."""
        return cls(x0, target, controls, problem.rollout(x0, controls),
                   problem.cost(x0, target, controls), metadata)

    def __len__(self) -> int:
        return len(self.initial_states)

    def __add__(self, other: Demonstrations) -> Demonstrations:
        """These samples followed by ``other``'s (same env; this metadata)."""
        return Demonstrations(*(np.concatenate([getattr(self, k), getattr(other, k)])
                                for k in ARRAYS),
                              metadata={**self.metadata, "num_samples": len(self) + len(other)})

    def split(self, fraction: float, seed: int = 0) -> tuple[Demonstrations, Demonstrations]:
        """A seeded random split into ``(first, rest)`` with ``fraction`` of samples first."""
        order = np.random.default_rng(seed).permutation(len(self))
        cut = round(fraction * len(self))
        return self.subset(order[:cut]), self.subset(order[cut:])

    def subset(self, index: np.ndarray) -> Demonstrations:
        return Demonstrations(*(getattr(self, k)[index] for k in ARRAYS),
                              metadata={**self.metadata, "num_samples": len(index)})


@dataclass
class Starts:
    """Every start of a run, drawn before any solve: ``x0, target [S_box, n]`` from the start
    box, and for each of the ``T`` starts on a trajectory, the box sample ``source [T]`` whose
    expert trajectory it starts on and the ``step [T]`` (1..N-1) along it (its target is the
    source's)."""

    x0: np.ndarray
    target: np.ndarray
    source: np.ndarray
    step: np.ndarray


def draw_starts(problem, num_samples: int, seed: int, trajectory_starts: float) -> Starts:
    """The starts of `generate` with ``seed``: all random draws happen here, in this order."""
    rng = np.random.default_rng(seed)
    n_on_trajectory = round(trajectory_starts * num_samples)
    n_box = num_samples - n_on_trajectory
    x0 = problem.sample_initial_states(rng, n_box)
    target = problem.sample_targets(rng, n_box)
    source = rng.integers(0, n_box, n_on_trajectory)
    step = rng.integers(1, problem.horizon, n_on_trajectory)
    return Starts(x0, target, source, step)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/K"`` -> ``(i, K)`` with ``0 <= i < K`` (ValueError naming ``--shard`` otherwise)."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--shard must be i/K with integers 0 <= i < K, e.g. 0/4, got {text!r}")
    index, count = int(parts[0]), int(parts[1])
    if not 0 <= index < count:
        raise ValueError(f"--shard i/K needs 0 <= i < K, got {text!r}")
    return index, count


def shard_samples(starts: Starts, shard: tuple[int, int],
                  chunk_size: int = CHUNK_SIZE) -> tuple[range, np.ndarray]:
    """Which samples shard ``(i, K)`` solves: a range of box samples made of whole chunks of
    ``chunk_size`` (chunk ``c`` of ``C`` goes to shard ``c K // C``), so each is solved in the
    same expert call as in the full run, and the starts on trajectories ``[T_i]`` (indices
    into ``starts.source``, increasing) whose source lies in that range."""
    index, count = shard
    n_box = len(starts.x0)
    n_chunks = -(-n_box // chunk_size)
    if count > n_chunks:
        raise ValueError(f"--shard .../{count}: {n_box} box samples make only {n_chunks} "
                         f"chunk(s) of {chunk_size}; use at most {n_chunks} shards")
    first, last = (min(n_box, -(-c * n_chunks // count) * chunk_size)
                   for c in (index, index + 1))
    on_trajectory = np.flatnonzero((starts.source >= first) & (starts.source < last))
    return range(first, last), on_trajectory


def generate(env_id: str, num_samples: int = DataConfig.num_samples, seed: int = DataConfig.seed,
             workers: int | None = DataConfig.workers, chunk_size: int = CHUNK_SIZE,
             env_kwargs: dict | None = None, progress: bool = True,
             trajectory_starts: float = DataConfig.trajectory_starts,
             shard: tuple[int, int] = (0, 1), device: str = DataConfig.device,
             margin: float = DataConfig.margin) -> Demonstrations:
    """Sample starts and targets with ``seed`` and solve each with the env's expert; a share
    ``trajectory_starts`` of the samples then starts from states on the first samples' expert
    trajectories (each at a step drawn uniformly from 1 to N-1, with that sample's target).

    ``shard=(i, K)``: only part ``i`` of ``K`` of those samples (`shard_samples`), box samples
    first; `merge` joins the ``K`` parts into the full run's dataset. Fast (batched) experts
    run in this process in chunks; slow ones (``Expert.parallel``) are spread over ``workers``
    processes (default: every core), except on a CUDA ``device``. ``margin``: the clearance
    the plans keep from hard state constraints (`Expert.with_margin`).
    """
    from trc_gym import __version__

    DataConfig(num_samples, seed, workers, trajectory_starts, device, margin)  # checks them
    env_kwargs = dict(env_kwargs or {})
    expert = make_expert(env_id, **env_kwargs).with_margin(margin).to(device)
    problem = expert.problem
    starts = draw_starts(problem, num_samples, seed, trajectory_starts)
    box, on_trajectory = shard_samples(starts, shard, chunk_size)
    x0, target = starts.x0[box.start:box.stop], starts.target[box.start:box.stop]
    bar = tqdm(total=len(box) + len(on_trajectory), desc=f"expert plans {env_id}",
               disable=not progress, unit="plan")
    solve = dict(workers=workers or os.cpu_count() or 1, chunk_size=chunk_size,
                 on_chunk=bar.update)
    controls = expert.plan_in_chunks(x0, target, **solve)
    if len(on_trajectory):
        states = problem.rollout(x0, controls)
        source = starts.source[on_trajectory] - box.start
        x0 = np.concatenate([x0, states[source, starts.step[on_trajectory]]])
        target = np.concatenate([target, target[source]])
        more = expert.plan_in_chunks(x0[len(box):], target[len(box):], **solve)
        controls = np.concatenate([controls, more])
    bar.close()
    metadata = {"env_id": env_id, "env_kwargs": env_kwargs, "seed": seed,
                "num_samples": len(x0), "trajectory_starts": trajectory_starts, "margin": margin,
                "n_state": problem.n_state, "n_control": problem.n_control,
                "horizon": problem.horizon, "version": __version__}
    if shard != (0, 1):
        metadata["shard"] = {"index": shard[0], "count": shard[1], "of_samples": num_samples,
                             "chunk_size": chunk_size}
    return Demonstrations.of_plans(problem, x0, target, controls, metadata)


def merge(parts: list[Demonstrations]) -> Demonstrations:
    """The full run's dataset from all ``K`` shards of one `generate` run (in any order): the
    samples in the full run's order, each plan the one its shard solved, and the states and
    costs recomputed over the whole set as `generate` computes them. ValueError unless the
    parts are exactly shards ``0..K-1`` of the same run, each holding the starts that run
    draws."""
    if not parts:
        raise ValueError("merge needs at least one shard")
    infos = [p.metadata.get("shard") for p in parts]
    if any(info is None for info in infos):
        raise ValueError("merge takes the shards of a `generate --shard i/K` run; part "
                         f"{infos.index(None)} is a whole dataset")
    run_keys = ("env_id", "env_kwargs", "seed", "trajectory_starts", "margin", "version")
    first = parts[0].metadata
    for j, part in enumerate(parts):
        for key in run_keys:
            if part.metadata.get(key) != first.get(key):
                raise ValueError(f"shard {j} has {key}={part.metadata.get(key)!r}, shard 0 has "
                                 f"{first.get(key)!r}: not parts of one run")
        for key in ("count", "of_samples", "chunk_size"):
            if infos[j][key] != infos[0][key]:
                raise ValueError(f"shard {j} is from a run with {key}={infos[j][key]}, shard 0 "
                                 f"from one with {infos[0][key]}")
    count, num_samples = infos[0]["count"], infos[0]["of_samples"]
    indices = sorted(info["index"] for info in infos)
    if indices != list(range(count)):
        raise ValueError(f"merge needs shards 0..{count - 1} once each, got {indices}")
    problem = make_problem(first["env_id"], **first["env_kwargs"])
    starts = draw_starts(problem, num_samples, first["seed"], first["trajectory_starts"])
    n_box = len(starts.x0)
    x0 = np.empty((num_samples, problem.n_state))
    target, controls = np.empty_like(x0), np.empty((num_samples, problem.horizon,
                                                    problem.n_control))
    for part, info in zip(parts, infos):
        box, on_trajectory = shard_samples(starts, (info["index"], count), info["chunk_size"])
        where = np.concatenate([np.arange(box.start, box.stop), n_box + on_trajectory])
        if len(where) != len(part) or not np.array_equal(
                part.initial_states[:len(box)], starts.x0[box.start:box.stop]):
            raise ValueError(f"shard {info['index']}/{count} does not hold the starts its run "
                             f"draws (seed {first['seed']}, {num_samples} samples)")
        x0[where], target[where], controls[where] = (part.initial_states, part.target_states,
                                                     part.controls)
    metadata = {k: v for k, v in first.items() if k != "shard"} | {"num_samples": num_samples}
    return Demonstrations.of_plans(problem, x0, target, controls, metadata)


def save(data: Demonstrations, path: str | Path) -> Path:
    """Write ``data`` to exactly ``path`` (an .npz archive, whatever the name), atomically (see
    `trc_gym.files`)."""
    arrays = {"metadata": np.array(json.dumps(data.metadata)),
              **{k: getattr(data, k) for k in ARRAYS}}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz" to the name
            np.savez(f, **arrays)

    return atomic_write(path, write)


def load(path: str | Path, env_id: str | None = None) -> Demonstrations:
    """Read a dataset and check it is what it claims: ``env_id`` (if given) is the file's, the
    shapes match its metadata, the controls lie in the bound, and the stored states and costs
    are the problem's rollout and cost of the stored controls (to float tolerance)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise ValueError(f"{path} is not a readable .npz dataset: {exc}") from exc
    missing = [k for k in (*ARRAYS, "metadata") if k not in arrays]
    if missing:
        raise ValueError(f"{path} is missing {missing}")
    try:
        metadata = json.loads(str(arrays["metadata"]))
    except ValueError as exc:
        raise ValueError(f"{path} has corrupt metadata: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: metadata must be a JSON object, got {type(metadata).__name__}")
    for key in ("num_samples", "n_state", "n_control", "horizon"):
        if isinstance(metadata.get(key), bool) or not isinstance(metadata.get(key), int):
            raise ValueError(f"{path}: metadata[{key!r}] must be an integer, got "
                             f"{metadata.get(key)!r}")
    if not isinstance(metadata.get("env_id"), str):
        raise ValueError(f"{path}: metadata['env_id'] must be an env id, got "
                         f"{metadata.get('env_id')!r}")
    if env_id is not None and metadata["env_id"] != env_id:
        raise ValueError(f"{path} holds {metadata['env_id']!r} data, expected {env_id!r}")
    env_kwargs = metadata.setdefault("env_kwargs", {})
    if not isinstance(env_kwargs, dict):
        raise ValueError(f"{path}: metadata['env_kwargs'] must be a mapping, got {env_kwargs!r}")
    S, n, m, N = (metadata[k] for k in ("num_samples", "n_state", "n_control", "horizon"))
    expected = {"initial_states": (S, n), "target_states": (S, n), "controls": (S, N, m),
                "states": (S, N + 1, n), "costs": (S,)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(f"{path}: {key} has shape {arrays[key].shape}, expected {shape}")
        if not np.all(np.isfinite(arrays[key])):
            raise ValueError(f"{path}: {key} contains NaN or inf")
    data = Demonstrations(*(arrays[k].astype(np.float64) for k in ARRAYS), metadata=metadata)
    check_claims(data, path)
    return data


def check_claims(data: Demonstrations, path: str | Path) -> None:
    """ValueError unless ``data`` is its env's: problem dimensions, controls inside the bound,
    states the rollout and costs the cost of its controls (relative tolerance 1e-6)."""
    problem = make_problem(data.metadata["env_id"], **data.metadata["env_kwargs"])
    dims = (problem.n_state, problem.n_control, problem.horizon)
    if dims != tuple(data.metadata[k] for k in ("n_state", "n_control", "horizon")):
        raise ValueError(f"{path}: its (n_state, n_control, horizon) are not "
                         f"{data.metadata['env_id']}'s {dims}")
    outside = (data.controls < problem.u_low - 1e-9) | (data.controls > problem.u_high + 1e-9)
    if outside.any():
        i = int(np.flatnonzero(outside.any(axis=(1, 2)))[0])
        raise ValueError(f"{path}: controls of sample {i} lie outside the bound "
                         f"[{problem.u_low.tolist()}, {problem.u_high.tolist()}]")
    states = problem.rollout(data.initial_states, data.controls)
    costs = problem.cost(data.initial_states, data.target_states, data.controls)
    for key, truth in (("states", states), ("costs", costs)):
        stored = getattr(data, key)
        wrong = ~np.isclose(stored, truth, rtol=1e-6, atol=1e-9 * (1.0 + np.abs(truth).max()))
        if wrong.any():
            i = int(np.flatnonzero(wrong.reshape(len(stored), -1).any(axis=1))[0])
            raise ValueError(f"{path}: stored {key} of sample {i} are not the problem's "
                             f"{'rollout' if key == 'states' else 'cost'} of its controls")
