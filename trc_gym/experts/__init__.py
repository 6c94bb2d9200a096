"""Experts: finite-horizon LQR, the exact box-constrained QP, and (for nonlinear problems) iLQR."""

from trc_gym.experts.ilqr import box_qp, ilqr, ilqr_expert_plans, objective_torch
from trc_gym.experts.lqr import (
    clipped_lqr_plans,
    finite_horizon_lqr,
    solve_box_qp,
    solve_box_qp_plans,
    stacked_prediction,
)

__all__ = ["box_qp", "clipped_lqr_plans", "finite_horizon_lqr", "ilqr", "ilqr_expert_plans",
           "objective_torch", "solve_box_qp", "solve_box_qp_plans", "stacked_prediction"]
