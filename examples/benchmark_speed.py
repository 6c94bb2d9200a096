"""How fast the planner simulates its plans: the eager rollout against the compiled one
(`trc_gym.compiled_rollout`), on every registered env, each pair timed in turn in one run so
that their ratio holds while the machine's speed drifts.

    python examples/benchmark_speed.py                  # every env; writes docs/speed.md (table)
    python examples/benchmark_speed.py --envs TRC-VanDerPol-v0 --out /tmp/speed.md

Per env, for the small planner (untrained: the time does not depend on the weights):
- batch-1 plan latency, eager and compiled, and their ratio;
- one MPC step (``predict`` replanning from the observation) as a fraction of the env's dt;
- the expert's batch-1 plan time, and how many times faster the compiled planner is;
- one cloning step (loss, backward, optimizer step) at batch 512 with and without the cost
  term, eager and compiled;
- GRPO's simulated env steps per second (the cost of 256 x 32 sampled plans, float64).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import trc_gym
from baselines import ExpertPolicy
from policies import TRCPolicy
from policies.bc import bc_loss
from trc_gym.evaluation import format_table, plan_latencies_ms
from trc_gym.files import write_text
from trc_gym.threads import one_thread

COLUMNS = ("ms_per_plan_eager", "ms_per_plan_compiled", "speedup", "mpc_step_dt",
           "expert_ms_per_plan", "vs_expert_compiled", "bc_step_ms_eager", "bc_step_ms",
           "bc_cost_step_ms_eager", "bc_cost_step_ms", "grpo_steps_per_s_eager",
           "grpo_steps_per_s")


PAGE_HEAD = """# Planning speed: the compiled rollout and the compiled planner

Each refinement step of the planner simulates its own plan. On a nonlinear problem that is N
steps of RK4, a few dozen tiny torch operations each, and in eager torch the per-operation
overhead sets the speed. `planner.compile()` (`trc_gym.compiled_rollout`) exports the problem's
own `step_torch` for a chunk of steps and compiles it with AOTInductor: a build for a single
start (20 to 25 steps a call, buffers on the stack), one for any batch (10 steps a call), and,
at the first backward pass, the chunk's vector-Jacobian product, so that gradients through the
rollout (cloning's cost term, fine-tuning's exact gradient) are compiled too. Transcendental
functions are computed as eager torch computes them (sin and cos by the same MKL calls in the
single-start build, the others by ATen's kernels), so the plans are the eager planner's bit
for bit, and the states too but for Rocket's batched build, whose thrust norm may differ in
the last bit (`tests/test_compiled_rollout.py`). Compiling an env's two forward builds takes
about 30 to 70 s once (the `compile_seconds` the benchmark prints); later processes load the
cached builds (`TRC_CACHE_DIR`, default `~/.cache/trc_gym`). The main job compiles the
rollout on nonlinear envs (`--no-compile` turns it off).

`compile()` then compiles the whole planner too, as its weights are at that moment, for
batch-1 plans (one robot, MPC): the traced planner exported at batch 1, with the compiled
rollout as one operator inside it, compiled by AOTInductor with the weights as constants (about
25 s, cached by a hash of the weights). Its matrix products and fused activations are
Inductor's, so its plans equal the traced planner's to float32 rounding (about 1e-7 relative;
the tests check 1e-5 and the same successes), not bit for bit. A weight change (an optimizer
step) sets it aside until the next `compile()`; the main job, which compiles before training,
plans with the traced planner.

Columns: the small planner's batch-1 plan, eager and compiled (rollout and planner), and
their ratio; one MPC step
(`predict` replanning from an observation) as a share of the env's dt; the expert's batch-1 plan
and how many times the compiled planner is faster; one cloning step (loss, backward, AdamW) at
batch 512 without and with the true-cost term, eager and compiled; GRPO's simulated env steps
per second (float64 costs of 256 x 32 sampled plans; `compile()` compiles float32 only, so both
are eager unless `compile(float64=True)`). The double integrator's rollout is one matrix product
and is not compiled: its cloning and GRPO columns time the same code twice, and their ratio
shows how much the machine's speed drifts between timings.

"""
PAGE_NOTES = """
Absolute times drift with the machine's load (up to 2x from minute to minute on a shared
machine); the ratios, timed in alternation, hold. What sets the remaining time:
- **The network:** with the planner compiled, a batch-1 plan is one call of compiled code
  (and the rollout's calls inside it), where the traced planner runs a few hundred small
  operations (`python examples/profile_plan.py` lists them). On the double integrator, whose
  rollout is one product, that halves the plan, to below the exact QP expert's time.
- **ObstacleNav's rollout is linear** (one product, then the collision check), so its eager
  planner was already fast; its dynamics are the only linear ones among the compiled envs,
  and the network and the collision features bound its ratio.
- **Cloning with the cost term** (`python examples/profile_plan.py --env TRC-Quadrotor2D-v0
  --cloning`, five steps of 176 ms): the network's matrix products take 23%, the compiled
  rollouts' backward pass (the adjoint, with its chunk VJP calls) 19% and their forward 5%,
  and ATen's sin and cos 11%: the batched builds call them through AOTInductor's proxy
  executor, exact, 18,000 calls of 2.6 us (MKL calls per value, as in the single-start build,
  are slower at batch 512). The network's own step (the column without the term) bounds the
  ratio, at 2.8 to 4x on Pendulum, Quadrotor2D and Rocket and 1.6x on ObstacleNav. Going
  further would take one vectorised MKL call per array for sin and cos inside the batched
  builds, and a compiled forward and backward of the network itself.
"""


def alternate(calls: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median seconds of each call, timed in turn ``repeats`` times after one warm-up each."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def cloning_step(policy: TRCPolicy, batch: tuple, cost_weight: float):
    """One cloning step: loss on every iterate, backward, AdamW step."""
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-9)
    scale = float(batch[3].mean())

    def step() -> None:
        loss, _ = bc_loss(policy, *batch, scale, cost_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(env_id: str, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    eager = TRCPolicy.create(env_id, "small")
    fast = TRCPolicy.create(env_id, "small")
    fast.model.load_state_dict(eager.model.state_dict())
    start = time.perf_counter()
    compiled = fast.compile()
    row: dict[str, float] = {"compile_seconds": time.perf_counter() - start}
    problem = eager.problem
    x0, target = trc_gym.held_out_starts(env_id, 512, seed=7)
    expert = ExpertPolicy(env_id)

    latency = plan_latencies_ms({"eager": eager, "fast": fast}, x0[:10 * repeats],
                                target[:10 * repeats])
    row["ms_per_plan_eager"], row["ms_per_plan_compiled"] = latency["eager"], latency["fast"]
    row["speedup"] = latency["eager"] / latency["fast"]
    start = time.perf_counter()
    expert.plan(x0[:1], target[:1])
    # As many starts as fit in about 2 s of expert time: 3 for iLQR, 200 for the exact QP.
    n_expert = int(np.clip(2.0 / (time.perf_counter() - start), 3, 200))
    expert_ms = plan_latencies_ms({"expert": expert, "fast": fast}, x0[:n_expert],
                                  target[:n_expert], block=1)
    row["expert_ms_per_plan"] = expert_ms["expert"]
    row["vs_expert_compiled"] = expert_ms["expert"] / expert_ms["fast"]

    mpc = TRCPolicy(fast.model, env_id, receding_horizon=True)
    mpc.compile()  # the compiled planner, from the cache
    obs = trc_gym.envs.base.observations(problem, x0[:1], target[:1], 0)[0]
    row["mpc_step_dt"] = alternate({"mpc": lambda: mpc.predict(obs)}, 10 * repeats)["mpc"] \
        / problem.dt

    demo = np.clip(np.zeros((len(x0), problem.horizon, problem.n_control)), problem.u_low,
                   problem.u_high)  # any plan: the time does not depend on it
    tensors = [torch.as_tensor(a, dtype=torch.float32) for a in
               (x0, target, demo, problem.cost(x0, target, demo))]
    for name, weight in (("bc_step_ms", 0.0), ("bc_cost_step_ms", 1.0)):
        times = alternate({"eager": cloning_step(eager, tensors, weight),
                           "fast": cloning_step(fast, tensors, weight)}, repeats)
        row[f"{name}_eager"], row[name] = 1000 * times["eager"], 1000 * times["fast"]

    B, G = 256, 32
    plans = np.clip(np.random.default_rng(0).normal(0, 0.3, (B * G, problem.horizon,
                                                             problem.n_control)),
                    problem.u_low, problem.u_high)
    starts, goals = np.repeat(x0[:B], G, axis=0), np.repeat(target[:B], G, axis=0)
    fast_problem = fast.problem
    times = alternate({"eager": lambda: problem.cost(starts, goals, plans),
                       "fast": lambda: fast_problem.cost(starts, goals, plans)}, repeats)
    row["grpo_steps_per_s_eager"] = B * G * problem.horizon / times["eager"]
    row["grpo_steps_per_s"] = B * G * problem.horizon / times["fast"]
    row["compiled"] = compiled
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(trc_gym.ENV_IDS),
                        choices=trc_gym.ENV_IDS)
    parser.add_argument("--repeats", type=int, default=5, help="timings per measurement")
    parser.add_argument("--out", type=Path, default=Path("docs/speed.md"))
    args = parser.parse_args()
    rows = {}
    with one_thread():
        for env_id in args.envs:
            rows[env_id] = measure(env_id, args.repeats)
            print(env_id, {k: round(v, 3) for k, v in rows[env_id].items()}, flush=True)
    command = "python examples/benchmark_speed.py"
    if args.envs != list(trc_gym.ENV_IDS):
        command += " --envs " + " ".join(args.envs)
    text = (PAGE_HEAD + f"Produced by `{command}` (one torch thread; each pair timed "
            f"in turn).\n\n" + format_table(rows, columns=COLUMNS, first="env") + "\n"
            + PAGE_NOTES)
    print("\n" + text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
