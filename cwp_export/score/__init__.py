"""Critical-weight scores (DESIGN.md section 3): losses, diagonal Fisher, the global mask."""

from .fisher import accumulate_fisher, cwp_scores, linear_weight_names
from .losses import (
                     KINDS,
                     SAFETY_TARGETS,
                     batch_loss,
                     encode,
                     fairness_loss,
                     fairness_losses,
                     general_instruct_loss,
                     general_instruct_losses,
                     general_text_loss,
                     general_text_losses,
                     make_loss,
                     safety_loss,
                     safety_losses,
)
from .mask import critical_count, global_threshold_mask, summary

__all__ = ["KINDS", "SAFETY_TARGETS", "accumulate_fisher", "batch_loss", "critical_count",
           "cwp_scores", "encode", "fairness_loss", "fairness_losses", "general_instruct_loss",
           "general_instruct_losses", "general_text_loss", "general_text_losses",
           "global_threshold_mask", "linear_weight_names", "make_loss", "safety_loss",
           "safety_losses", "summary"]
