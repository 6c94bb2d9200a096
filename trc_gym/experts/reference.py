"""A dense nonlinear-programming reference for the nonlinear envs: how close is an expert to
the optimum?

Independent of the package's torch dynamics: each env's dynamics, cost and hard state
constraints are written again here, symbolically in CasADi, from the env's docstring (one small
function per env below; parameter values as documented there). One step is RK4 with the
control held over the step (`ControlProblem.discrete_step`), except ObstacleNav's exact
zero-order-hold double integrator. The cost is

    J = w * sum_{k<N} [e_k' Q e_k + u_k' R u_k] + e_N' Qf e_N,    e_k = x_k - x*

with angle errors wrapped smoothly, ``atan2(sin d, cos d)`` (the same value as the package's
wrap into ``[-pi, pi)``; at ``d = pi`` the squares agree).

Each start is solved by multiple shooting with IPOPT (exact Hessian): the decision variables are
the controls ``u_0..u_{N-1}`` (within the control box) and the states ``x_1..x_N`` (``x_0``
fixed), the dynamics are equality constraints, and the hard state constraints are inequalities:
ObstacleNav's states after the start stay outside every obstacle (clearance >= `MARGIN`),
Rocket's states before the last stay above the ground (altitude >= `MARGIN`; a crash is an
altitude below 0 before the last step). The NLP is built once per env, with the start and the
target as parameters, and solved from several initial guesses per start; every solution is
scored by the package's own `problem.cost`, and per start the cheapest that succeeds
(`problem.success`) without breaking a constraint (`problem.constraint_violations`) is kept.

Needs CasADi (``pip install casadi``, or the package's ``reference`` extra). Used by
tests/test_reference.py and examples/expert_quality.py.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trc_gym.problem import ControlProblem

try:
    import casadi as ca
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("trc_gym.experts.reference needs CasADi: `pip install casadi` (or install "
                      "the package's `reference` extra: pip install -e '.[reference]')") from exc

MARGIN = 1e-4  # m: the least clearance (ObstacleNav) and altitude (Rocket) the NLP allows
# bound_relax_factor 0: IPOPT keeps the controls within the box exactly; the unstable envs'
# plans (a pendulum balanced upright open loop) amplify even a 1e-8 overshoot, clipped away
# when the plan is scored, by 1e7.
IPOPT_OPTIONS = {"ipopt.print_level": 0, "print_time": False, "ipopt.sb": "yes",
                 "ipopt.max_iter": 1000, "ipopt.tol": 1e-10, "ipopt.bound_relax_factor": 0.0}
# For good guesses (the caller's, e.g. an expert's plan): start with a small barrier parameter
# and the guess barely pushed off the bounds, so that IPOPT polishes the guess in its own basin
# (from the default start it can wander to a worse local optimum).
WARM_OPTIONS = {"ipopt.mu_init": 1e-6, "ipopt.bound_push": 1e-9, "ipopt.bound_frac": 1e-9}

Dynamics = Callable[[ca.SX, ca.SX], ca.SX]  # (x [n], u [m]) -> dx/dt or x+ [n]
# (model, x0 [B, n], target [B, n]) -> guesses, each (U [B, N, m], X [B, N+1, n] or None: roll
# U out)
Guesses = Callable[["SymbolicModel", np.ndarray, np.ndarray],
                   list[tuple[np.ndarray, np.ndarray | None]]]
Controller = Callable[[np.ndarray, int], np.ndarray]  # (x [B, n], step k) -> u [B, m]


@dataclass(frozen=True)
class SymbolicModel:
    """One env's problem in CasADi. Shapes are column vectors: states ``[n]``, controls
    ``[m]``, plans ``U [m, N]`` (CasADi's column-major layout: one column per step)."""

    n: int
    m: int
    horizon: int
    dt: float  # s
    weight: float  # w: the running-cost weight (1 or dt)
    Q: np.ndarray  # [n, n]
    R: np.ndarray  # [m, m]
    Qf: np.ndarray  # [n, n]
    u_low: np.ndarray  # [m]
    u_high: np.ndarray  # [m]
    step: ca.Function  # (x [n], u [m]) -> x+ [n]
    error: ca.Function  # (x [n], target [n]) -> e [n] (angles wrapped)
    # g(x_k) >= 0 on the states x_k with k in steps (a range within 1..N): [(steps, g)]
    constraints: tuple[tuple[range, ca.Function], ...]
    guesses: Guesses  # the model's own initial guesses

    def stage(self, x: ca.SX, u: ca.SX, target: ca.SX) -> ca.SX:
        """The running cost ``w (e'Qe + u'Ru)`` of one step."""
        e = self.error(x, target)
        return self.weight * (ca.bilin(self.Q, e, e) + ca.bilin(self.R, u, u))

    def terminal(self, x: ca.SX, target: ca.SX) -> ca.SX:
        e = self.error(x, target)
        return ca.bilin(self.Qf, e, e)

    @functools.cached_property
    def rollout(self) -> ca.Function:
        """``(x0 [n], U [m, N]) -> X [n, N]``: the states ``x_1..x_N`` of a plan."""
        return self.step.mapaccum(self.horizon)

    @functools.cached_property
    def cost(self) -> ca.Function:
        """``(x0 [n], target [n], U [m, N]) -> J``: the cost of a plan (within the box) that
        breaks no constraint, by rolling it out."""
        x0, target = ca.SX.sym("x0", self.n), ca.SX.sym("target", self.n)
        U = ca.SX.sym("U", self.m, self.horizon)
        X = ca.horzcat(x0, self.rollout(x0, U))
        J = sum(self.stage(X[:, k], U[:, k], target) for k in range(self.horizon))
        return ca.Function("cost", [x0, target, U], [J + self.terminal(X[:, -1], target)])


def make_model(n: int, m: int, *, dt: float, horizon: int, Q, R, Qf, u_low, u_high,
               weight: float, dynamics: Dynamics | None = None,
               exact_step: Dynamics | None = None, angles: tuple[int, ...] = (),
               free: tuple[int, ...] = (),
               constraints: tuple[tuple[range, Dynamics], ...] = (),
               guesses: Guesses | None = None) -> SymbolicModel:
    """A `SymbolicModel` from continuous ``dynamics`` (stepped by RK4, control held) or an
    ``exact_step``; ``angles``: state indices whose error is wrapped, ``free``: indices whose
    error is zero (not costed); ``constraints``: ``(steps, g)`` with ``g(x) >= 0`` required on
    the states of those steps."""
    x, u, target = ca.SX.sym("x", n), ca.SX.sym("u", m), ca.SX.sym("target", n)
    if exact_step is not None:
        nxt = exact_step(x, u)
    else:
        k1 = dynamics(x, u)
        k2 = dynamics(x + 0.5 * dt * k1, u)
        k3 = dynamics(x + 0.5 * dt * k2, u)
        k4 = dynamics(x + dt * k3, u)
        nxt = x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    d = x - target
    e = ca.vertcat(*[ca.atan2(ca.sin(d[i]), ca.cos(d[i])) if i in angles else
                     (0.0 if i in free else d[i]) for i in range(n)])
    return SymbolicModel(
        n=n, m=m, horizon=horizon, dt=dt, weight=weight,
        Q=np.asarray(Q, dtype=float), R=np.asarray(R, dtype=float),
        Qf=np.asarray(Qf, dtype=float), u_low=np.asarray(u_low, dtype=float),
        u_high=np.asarray(u_high, dtype=float),
        step=ca.Function("step", [x, u], [nxt]),
        error=ca.Function("error", [x, target], [e]),
        constraints=tuple((steps, ca.Function("g", [x], [g(x)])) for steps, g in constraints),
        guesses=guesses or (lambda model, x0, target: []))


# ------------------------------------------------------------------------ own initial guesses
def constant_plans(x0: np.ndarray, horizon: int, values: np.ndarray,
                   steps: int | None = None) -> np.ndarray:
    """Plans ``[B, N, m]`` holding ``values [m]`` (or ``[B, m]``) for the first ``steps`` steps
    (default all) and zero after."""
    plans = np.zeros((len(x0), horizon, np.shape(values)[-1]))
    plans[:, :steps] = np.broadcast_to(values, (len(x0), np.shape(values)[-1]))[:, None]
    return plans


def closed_loop(model: SymbolicModel, x0: np.ndarray,
                controller: Controller) -> tuple[np.ndarray, np.ndarray]:
    """``(U [B, N, m], X [B, N+1, n])``: ``controller`` (clipped into the box) flown from
    ``x0 [B, n]`` through the model's own steps."""
    step = model.step.map(len(x0))
    X, U = [x0], []
    for k in range(model.horizon):
        U.append(np.clip(controller(X[-1], k), model.u_low, model.u_high))
        X.append(np.asarray(step(X[-1].T, U[-1].T)).T)
    return np.stack(U, axis=1), np.stack(X, axis=1)


def lqr_gain(model: SymbolicModel, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The stationary discrete LQR gain ``K [m, n]`` (``u = u* - K e``) of the model's step
    linearised at the rest state ``x [n]`` held by ``u [m]``, for its own Q and R."""
    from scipy.linalg import solve_discrete_are

    xs, us = ca.SX.sym("x", model.n), ca.SX.sym("u", model.m)
    nxt = model.step(xs, us)
    A = np.asarray(ca.Function("A", [xs, us], [ca.jacobian(nxt, xs)])(x, u))
    B = np.asarray(ca.Function("B", [xs, us], [ca.jacobian(nxt, us)])(x, u))
    P = solve_discrete_are(A, B, model.Q, model.R)
    return np.linalg.solve(model.R + B.T @ P @ B, B.T @ P @ A)


def swing_up_guesses(model: SymbolicModel, x0: np.ndarray, target: np.ndarray, angle: int,
                     pump: Controller, near: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Swing-up guesses: ``pump`` (an energy-pumping law) flown closed loop until the wrapped
    angle error plus 0.2 s times the rate error is under ``near`` (rad), then LQR about the
    target; with no kick, and with a kick of 5 steps at either bound first."""
    def wrap(d):
        return np.arctan2(np.sin(d), np.cos(d))

    gains = [lqr_gain(model, t, np.zeros(model.m)) for t in target]  # [B] x [m, n]
    K = np.stack(gains)

    def error(x):
        e = x - target
        e[:, angle] = wrap(e[:, angle])
        return e

    out = []
    for kick in (0.0, model.u_high[0], model.u_low[0]):
        def controller(x, k, kick=kick):
            if kick and k < 5:
                return np.full((len(x), model.m), kick)
            e = error(x)
            catch = -(K @ e[:, :, None])[:, :, 0]
            close = np.abs(e[:, angle]) + 0.2 * np.abs(e[:, angle + 1]) < near
            return np.where(close[:, None], catch, pump(x, k))

        out.append(closed_loop(model, x0, controller))
    return out


def interpolated_guess(x0: np.ndarray, target: np.ndarray, horizon: int, u: np.ndarray,
                       settle: int, angle: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A guess that sets the states directly (which multiple shooting allows): a smooth
    interpolation ``x0 -> target`` over the first ``settle`` steps, then the target, with the
    controls ``u [m]`` (or ``[B, m]``) throughout; with an ``angle`` index, to the target angle
    nearest the start."""
    tau = np.minimum(np.arange(horizon + 1) / settle, 1.0)
    s = (3.0 * tau**2 - 2.0 * tau**3)[None, :, None]
    U = np.broadcast_to(np.asarray(u, dtype=float), (len(x0), np.shape(u)[-1]))
    goal = target.copy()
    if angle is not None:
        d = target[:, angle] - x0[:, angle]
        goal[:, angle] = x0[:, angle] + np.arctan2(np.sin(d), np.cos(d))
    return np.repeat(U[:, None], horizon, axis=1), x0[:, None] + s * (goal - x0)[:, None]


# ------------------------------------------------------------------------ the envs
def van_der_pol() -> SymbolicModel:
    """TRC-VanDerPol-v0: ``x' = v, v' = mu (1 - x^2) v - x + u``, mu = 1, |u| <= 2."""
    mu, bound, N = 1.0, 2.0, 100

    def dynamics(x, u):
        return ca.vertcat(x[1], mu * (1.0 - x[0] ** 2) * x[1] - x[0] + u[0])

    def guesses(model, x0, target):
        pushes = [(constant_plans(x0, N, [s * bound], N // 4), None) for s in (1.0, -1.0)]
        return [*pushes, interpolated_guess(x0, target, N, target[:, :1], N // 2)]

    Q = np.diag([10.0, 5.0])
    return make_model(2, 1, dt=0.05, horizon=N, Q=Q, R=[[0.1]], Qf=20.0 * Q, u_low=[-bound],
                      u_high=[bound], weight=0.05, dynamics=dynamics, guesses=guesses)


def pendulum() -> SymbolicModel:
    """TRC-Pendulum-v0: ``th'' = 3 g / (2 l) sin th + 3 / (m l^2) u`` (th from upright), g = 10,
    m = l = 1, |u| <= 2 N m; the angle error wrapped."""
    g, mass, length, bound, N = 10.0, 1.0, 1.0, 2.0, 100

    def dynamics(x, u):
        acc = 3.0 * g / (2.0 * length) * ca.sin(x[0]) + 3.0 / (mass * length**2) * u[0]
        return ca.vertcat(x[1], acc)

    def pump(x, k):  # energy per unit inertia, 1/2 th'^2 + a cos th, is a at upright rest
        a = 3.0 * g / (2.0 * length)
        energy = 0.5 * x[:, 1] ** 2 + a * np.cos(x[:, 0])
        push = np.where(x[:, 1] == 0.0, 1.0, np.sign(x[:, 1] * (a - energy)))
        return bound * push[:, None]

    def guesses(model, x0, target):
        return [*swing_up_guesses(model, x0, target, 0, pump, 0.6),
                interpolated_guess(x0, target, N, [0.0], N // 2, angle=0)]

    return make_model(2, 1, dt=0.05, horizon=N, Q=np.diag([1.0, 0.1]), R=[[0.01]],
                      Qf=np.diag([100.0, 10.0]), u_low=[-bound], u_high=[bound], weight=0.05,
                      dynamics=dynamics, angles=(0,), guesses=guesses)


def cart_pole() -> SymbolicModel:
    """TRC-CartPole-v0: the Barto-Sutton-Anderson cart-pole, state ``[x, x', th, th']`` (th
    from upright), g = 9.8, cart 1 kg, pole 0.1 kg of half-length 0.5 m, |F| <= 10 N."""
    g, cart, pole, half, bound, N = 9.8, 1.0, 0.1, 0.5, 10.0, 100
    total, ml = cart + pole, pole * half

    def dynamics(x, u):
        sin, cos = ca.sin(x[2]), ca.cos(x[2])
        tmp = (u[0] + ml * x[3] ** 2 * sin) / total
        thacc = (g * sin - cos * tmp) / (half * (4.0 / 3.0 - pole * cos**2 / total))
        xacc = tmp - ml * thacc * cos / total
        return ca.vertcat(x[1], xacc, x[3], thacc)

    def pump(x, k):  # the pole's energy changes as dE/dt = -ml th' cos(th) x''
        th, rate = x[:, 2], x[:, 3]
        energy = 0.5 * (4.0 / 3.0) * pole * half**2 * rate**2 + pole * g * half * np.cos(th)
        push = -np.sign((pole * g * half - energy) * rate * np.cos(th))
        push = np.where(rate == 0.0, 1.0, push)
        centre = -0.3 * x[:, 0] - 0.3 * x[:, 1]  # a weak spring to the origin
        return bound * np.clip(push + centre, -1.0, 1.0)[:, None]

    def guesses(model, x0, target):
        return [*swing_up_guesses(model, x0, target, 2, pump, 0.4),
                interpolated_guess(x0, target, N, [0.0], N // 2, angle=2)]

    return make_model(4, 1, dt=0.05, horizon=N, Q=np.diag([1.0, 0.1, 1.0, 0.1]), R=[[0.001]],
                      Qf=np.diag([100.0, 10.0, 100.0, 10.0]), u_low=[-bound], u_high=[bound],
                      weight=0.05, dynamics=dynamics, angles=(2,), guesses=guesses)


def quadrotor_2d() -> SymbolicModel:
    """TRC-Quadrotor2D-v0: the planar quadrotor ``[x, z, th, x', z', th']``, m = 0.486 kg,
    L = 0.25 m, I = 0.00383 kg m^2, g = 9.81, thrusts in ``[0, m g]`` N; pitch error wrapped."""
    mass, arm, inertia, g, dt, N = 0.486, 0.25, 0.00383, 9.81, 0.05, 60

    def dynamics(x, u):
        total = u[0] + u[1]
        return ca.vertcat(x[3], x[4], x[5], -total * ca.sin(x[2]) / mass,
                          total * ca.cos(x[2]) / mass - g, arm * (u[1] - u[0]) / inertia)

    def guesses(model, x0, target):  # hover thrust: rolled out, and along a straight flight
        hover = np.full(2, 0.5 * mass * g)
        return [(constant_plans(x0, N, hover), None),
                interpolated_guess(x0, target, N, hover, N // 2)]

    Q = np.diag([10.0, 10.0, 1.0, 1.0, 1.0, 0.1])
    return make_model(6, 2, dt=dt, horizon=N, Q=Q, R=0.1 * np.eye(2), Qf=50.0 * Q,
                      u_low=[0.0, 0.0], u_high=[mass * g] * 2, weight=dt, dynamics=dynamics,
                      angles=(2,), guesses=guesses)


def rocket() -> SymbolicModel:
    """TRC-Rocket-v0: the point-mass lander ``[r (3), v (3), m]`` (m, m/s, t): ``r' = v,
    v' = T / m + g, m' = -sqrt(T'T + 1e-6) / (Isp g0)``, g = (0, 0, -3.71), Isp = 200.7 s,
    g0 = 9.81; thrust (kN) in ``[-5, 5]^2 x [0, 16]``; the mass error is free; no crash:
    altitude >= 0 at every state before the last."""
    gravity = np.array([0.0, 0.0, -3.71])
    exhaust, eps, dt, N = 200.7 * 9.81, 1e-6, 1.0, 40
    u_low, u_high = np.array([-5.0, -5.0, 0.0]), np.array([5.0, 5.0, 16.0])

    def dynamics(x, u):
        return ca.vertcat(x[3:6], u / x[6] + gravity, -ca.sqrt(ca.dot(u, u) + eps) / exhaust)

    def guesses(model, x0, target):
        """A constant hover thrust, and the open-loop minimum-energy double-integrator
        transfer (acceleration linear in time, mass held at its start)."""
        hover = constant_plans(x0, N, x0[:, 6:7] * -gravity)
        T = N * dt
        dv = target[:, 3:6] - x0[:, 3:6]  # [B, 3]
        dr = target[:, :3] - x0[:, :3] - x0[:, 3:6] * T
        # a(t) = c0 + c1 t with v(T) = v*, r(T) = r*.
        c = np.linalg.solve(np.array([[T, T**2 / 2.0], [T**2 / 2.0, T**3 / 6.0]]),
                            np.stack([dv, dr], axis=1))  # [B, 2, 3]
        t = (np.arange(N) + 0.5) * dt
        accel = c[:, None, 0] + t[None, :, None] * c[:, None, 1]  # [B, N, 3]
        transfer = np.clip(x0[:, None, 6:7] * (accel - gravity), u_low, u_high)
        return [(np.clip(hover, u_low, u_high), None), (transfer, None)]

    return make_model(7, 3, dt=dt, horizon=N, Q=np.zeros((7, 7)), R=0.01 * np.eye(3),
                      Qf=np.diag([10.0] * 6 + [0.0]), u_low=u_low, u_high=u_high, weight=dt,
                      dynamics=dynamics, free=(6,), guesses=guesses,
                      constraints=((range(1, N), lambda x: x[2] - MARGIN),))


OBSTACLES = ((-1.5, 1.2, 1.0), (-1.0, -1.6, 0.9), (1.2, 0.0, 1.0), (1.8, 2.6, 0.7),
             (2.2, -2.4, 0.7))  # centre x, centre y, radius (m)
# ObstacleNav's detours: polylines through these via points (m), besides the straight line.
DETOURS = (((0.0, 2.5),), ((0.0, 0.0),), ((0.0, -2.5),),
           ((-1.2, -0.25), (1.5, 1.45)), ((-1.2, -0.25), (1.6, -1.4)),
           ((-1.5, 2.6), (1.2, 1.45)), ((-1.0, -2.9), (1.6, -1.4)))


def obstacle_nav() -> SymbolicModel:
    """TRC-ObstacleNav-v0: a unit point mass ``[px, py, vx, vy]`` under an acceleration (m/s^2,
    ``[-2, 2]^2``) held over each step of 0.1 s, stepped exactly; every state after the start
    stays outside the five obstacles."""
    dt, N, bound = 0.1, 50, 2.0

    def exact_step(x, u):
        return ca.vertcat(x[:2] + x[2:] * dt + 0.5 * dt**2 * u, x[2:] + dt * u)

    def clearance(x):  # squared distance to each centre minus the squared least distance
        return ca.vertcat(*[(x[0] - cx) ** 2 + (x[1] - cy) ** 2 - (r + MARGIN) ** 2
                            for cx, cy, r in OBSTACLES])

    def guesses(model, x0, target):
        """The straight line and the `DETOURS`, flown with a smooth timing (at rest at both
        ends), states and controls set from the path."""
        tau = np.arange(N + 1) / N
        s = 3.0 * tau**2 - 2.0 * tau**3  # arc-length fraction
        out = []
        for via in ((), *DETOURS):
            X = np.zeros((len(x0), N + 1, 4))
            for b in range(len(x0)):
                points = np.array([x0[b, :2], *via, target[b, :2]])
                lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
                along = np.concatenate([[0.0], np.cumsum(lengths)]) / max(lengths.sum(), 1e-9)
                X[b, :, 0] = np.interp(s, along, points[:, 0])
                X[b, :, 1] = np.interp(s, along, points[:, 1])
            X[:, :, 2:] = np.gradient(X[:, :, :2], dt, axis=1)
            X[:, 0] = x0
            U = np.clip(np.diff(X[:, :, 2:], axis=1) / dt, -bound, bound)
            out.append((U, X))
        return out

    return make_model(4, 2, dt=dt, horizon=N, Q=np.diag([1.0, 1.0, 0.0, 0.0]),
                      R=0.1 * np.eye(2), Qf=100.0 * np.eye(4), u_low=[-bound] * 2,
                      u_high=[bound] * 2, weight=dt, exact_step=exact_step, guesses=guesses,
                      constraints=((range(1, N + 1), clearance),))


# By problem name (`ControlProblem.name`; the env id is ``TRC-<name>-v0``).
MODELS: dict[str, Callable[[], SymbolicModel]] = {
    "VanDerPol": van_der_pol,
    "Pendulum": pendulum,
    "CartPole": cart_pole,
    "Quadrotor2D": quadrotor_2d,
    "Rocket": rocket,
    "ObstacleNav": obstacle_nav,
}


@functools.cache
def symbolic_model(name: str) -> SymbolicModel:
    """The CasADi model of the problem called ``name`` (one of `MODELS`; made once per
    process)."""
    if name not in MODELS:
        raise ValueError(f"no reference model for the problem {name!r}; available: "
                         f"{sorted(MODELS)}")
    return MODELS[name]()


# ------------------------------------------------------------------------ multiple shooting
@dataclass(frozen=True)
class ShootingNLP:
    """The multiple-shooting NLP of one env: variables ``[vec(U [m, N]); vec(X [n, N])]``
    (``X``: states ``x_1..x_N``), parameters ``[x0; target]``; bounds on the variables and on
    the constraints ``[dynamics defects (n N); state constraints]``."""

    model: SymbolicModel
    solver: ca.Function  # IPOPT with `IPOPT_OPTIONS`
    warm_solver: ca.Function  # and `WARM_OPTIONS`
    lbx: np.ndarray
    ubx: np.ndarray
    lbg: np.ndarray
    ubg: np.ndarray

    def solve(self, x0: np.ndarray, target: np.ndarray, U: np.ndarray, X: np.ndarray,
              warm: bool = False) -> np.ndarray:
        """Controls ``[N, m]`` (clipped into the box) that IPOPT reaches from the guess
        ``U [N, m]``, ``X [N+1, n]`` for one start ``x0 [n]`` to ``target [n]``, with
        `WARM_OPTIONS` if ``warm`` (NaN where IPOPT returns no number)."""
        mod = self.model
        guess = np.concatenate([U.reshape(-1), X[1:].reshape(-1)])  # column-major = row order
        solver = self.warm_solver if warm else self.solver
        sol = solver(x0=guess, p=np.concatenate([x0, target]), lbx=self.lbx, ubx=self.ubx,
                     lbg=self.lbg, ubg=self.ubg)
        w = np.asarray(sol["x"]).reshape(-1)
        U = w[: mod.m * mod.horizon].reshape(mod.horizon, mod.m)
        return np.clip(U, mod.u_low, mod.u_high)


@functools.cache
def shooting_nlp(name: str) -> ShootingNLP:
    """The IPOPT solvers of the multiple-shooting NLP of the problem called ``name`` (built
    once per process)."""
    mod = symbolic_model(name)
    n, m, N = mod.n, mod.m, mod.horizon
    U, X = ca.SX.sym("U", m, N), ca.SX.sym("X", n, N)
    x0, target = ca.SX.sym("x0", n), ca.SX.sym("target", n)
    states = ca.horzcat(x0, X)
    J = sum(mod.stage(states[:, k], U[:, k], target) for k in range(N))
    J += mod.terminal(X[:, -1], target)
    defects = [X[:, k] - mod.step(states[:, k], U[:, k]) for k in range(N)]
    paths = [g(states[:, k]) for steps, g in mod.constraints for k in steps]
    n_path = sum(int(p.numel()) for p in paths)
    nlp = {"x": ca.veccat(U, X), "p": ca.vertcat(x0, target), "f": J,
           "g": ca.vertcat(*defects, *paths)}
    solver = ca.nlpsol("reference", "ipopt", nlp, IPOPT_OPTIONS)
    warm_solver = ca.nlpsol("reference_warm", "ipopt", nlp, IPOPT_OPTIONS | WARM_OPTIONS)
    lbx = np.concatenate([np.tile(mod.u_low, N), np.full(n * N, -np.inf)])
    ubx = np.concatenate([np.tile(mod.u_high, N), np.full(n * N, np.inf)])
    lbg = np.zeros(n * N + n_path)
    ubg = np.concatenate([np.zeros(n * N), np.full(n_path, np.inf)])
    return ShootingNLP(mod, solver, warm_solver, lbx, ubx, lbg, ubg)


def reference_plans(problem: ControlProblem, x0: np.ndarray, target: np.ndarray,
                    guesses: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Best plans ``U [B, N, m]`` and their costs ``J [B]`` from ``x0 [B, n]`` to
    ``target [B, n]`` (the problem's units), for the package's ``problem`` of one of the
    modelled envs (`MODELS`), e.g. ``trc_gym.make_problem("TRC-Pendulum-v0")`` or an expert's
    ``expert.problem``: its name picks the CasADi model, and it scores the solutions.

    IPOPT on the multiple-shooting NLP, started from each plan in ``guesses`` (``[B, N, m]``
    each, e.g. the expert's plans; clipped into the box, states initialised by rolling them
    out; each solved twice: with `WARM_OPTIONS`, which polishes the guess in its own basin, and
    with the default options), from zero controls, and from the model's own guesses (energy
    pumping with an LQR catch for the swing-ups, states interpolated to the target, hover
    thrust, a minimum-energy transfer for the lander, the straight line and detours around the
    obstacles). Every solution, clipped into the control box, is scored by the package's own
    ``problem.cost``; per start the lowest-J one that succeeds (``problem.success``) without
    breaking a constraint (``problem.constraint_violations``) is kept. A start with no such
    solution gets its lowest-J solution anyway, and a ``RuntimeWarning`` names those starts.

    The result is the best of several local optima: an upper bound on the true optimum, not a
    certificate of it (on the swing-ups the basins are many)."""
    nlp = shooting_nlp(problem.name)
    mod = nlp.model
    x0 = problem.check_states(x0, "x0")
    target = problem.check_states(target, "target", batch=len(x0))
    B, N, m = len(x0), mod.horizon, mod.m
    given = [np.clip(problem.check_plan(x0, U)[1], mod.u_low, mod.u_high) for U in guesses]
    # (U, X or None: roll U out, warm): each given guess both ways, then zero and our own.
    starts = [(U, None, warm) for U in given for warm in (True, False)]
    starts += [(U, X, False) for U, X in [(np.zeros((B, N, m)), None),
                                          *mod.guesses(mod, x0, target)]]
    best_U = np.zeros((B, N, m))
    best = np.full(B, np.inf)  # the score: J, plus inf where not successful or violating
    best_J = np.full(B, np.inf)
    for U0, X0, warm in starts:
        sols = np.empty((B, N, m))
        for b in range(B):
            X = X0[b] if X0 is not None else np.vstack(
                [x0[b], np.asarray(mod.rollout(x0[b], U0[b].T)).T])
            sols[b] = nlp.solve(x0[b], target[b], U0[b], X, warm)
        finite = np.isfinite(sols).all(axis=(1, 2))
        sols[~finite] = 0.0
        J = np.where(finite, problem.cost(x0, target, sols), np.inf)
        states = problem.rollout(x0, sols)
        good = problem.success(states, target) & ~problem.constraint_violations(states)
        score = np.where(good, J, np.inf)
        # Better: a lower score, or a lower J while the start has no successful solution.
        take = (score < best) | (np.isinf(best) & np.isinf(score) & (J < best_J))
        best_U[take], best[take], best_J[take] = sols[take], score[take], J[take]
    failed = np.flatnonzero(np.isinf(best))
    if len(failed):
        warnings.warn(f"reference_plans({problem.name}): no successful, constraint-free "
                      f"solution from start(s) {failed.tolist()}; returning the lowest-cost one",
                      RuntimeWarning, stacklevel=2)
    return best_U, best_J


__all__ = ["MODELS", "ShootingNLP", "SymbolicModel", "reference_plans", "shooting_nlp",
           "symbolic_model"]
