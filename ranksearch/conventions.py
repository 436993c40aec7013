"""How ranksearch counts what it reports, stated once.

Free of torch, so that the report can quote it without importing the training stack.
"""

__all__ = ["FLOPS_CONVENTION"]

FLOPS_CONVENTION = (
    "FLOPs = 2 x multiply-accumulates of convolutions and matrix products, counted by "
    "torch.utils.flop_counter.FlopCounterMode for one input (batch size 1)"
)
