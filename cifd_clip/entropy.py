"""CompressAI's entropy models, imported once without the FutureWarning (`torch.jit.script` is deprecated)
that its torch_geometric dependency prints at import, which every stage would otherwise show its user."""
import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck, EntropyModel

__all__ = ["EntropyBottleneck", "EntropyModel"]
