"""Experts: the exact box-constrained QP for linear problems, box-constrained iLQR for the rest.

Each env names its expert (``ControlEnv.expert_class``); `trc_gym.envs.make_expert` builds it.
"""

from trc_gym.experts.base import Expert
from trc_gym.experts.ilqr import ILQRExpert, box_qp, ilqr, objective_torch
from trc_gym.experts.lqr import BoxQPExpert, clipped_lqr_plans, finite_horizon_lqr, solve_box_qp

__all__ = ["BoxQPExpert", "Expert", "ILQRExpert", "box_qp", "clipped_lqr_plans",
           "finite_horizon_lqr", "ilqr", "objective_torch", "solve_box_qp"]
