"""How ranksearch counts what it reports, stated once.

Free of torch, so that the report can quote it without importing the training stack.
"""

__all__ = ["FLOPS_CONVENTION", "trial_key", "baseline_key"]

FLOPS_CONVENTION = (
    "FLOPs = 2 x multiply-accumulates of convolutions and matrix products, counted by "
    "torch.utils.flop_counter.FlopCounterMode for one input (batch size 1)"
)


def trial_key(number: int) -> str:
    """The name of trial ``number``'s model in ``latency.json``."""
    return f"trial:{number}"


def baseline_key(method: str, target: float) -> str:
    """The name of a baseline's model in ``latency.json``: ``baseline:<method>-<target>x``."""
    return f"baseline:{method}-{target:g}x"
