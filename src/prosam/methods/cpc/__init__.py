"""CPC-SAM: causal prompt calibration for SAM, as prosam reads its abstract.

See ``docs/methods/cpc.md``. Parts: :mod:`.prompt_sets` (M random annotations per entity
encoded as aligned prompt tokens), :mod:`.sources` (where they come from on supports and
targets), :mod:`.capl` (the causal prompt learner and its task/entity weights),
:mod:`.losses` (the cumulative reweighted objective), :mod:`.adapters` (the lower-level
decoder part), :mod:`.bilevel` (first-order bi-level schedule) and :mod:`.method`
(:class:`CPCMethod`, its baselines and :func:`build_cpc`).
"""

from prosam.methods.cpc.adapters import (
    DecoderAdapter,
    DecoderLoRA,
    TokenOffsets,
    build_adapter,
    decode_sets,
)
from prosam.methods.cpc.bilevel import BilevelCalibrator, BilevelConfig, SupportItem, support_item
from prosam.methods.cpc.capl import (
    CausalPromptLearner,
    PromptWeights,
    calibrated_prompt,
    combine_weights,
    one_hot_weights,
    uniform_weights,
)
from prosam.methods.cpc.losses import LossTerms, LossWeights, cumulative_loss
from prosam.methods.cpc.method import (
    CPC_KINDS,
    CPCMethod,
    EntityPrediction,
    build_cpc,
)
from prosam.methods.cpc.prompt_sets import (
    PromptSets,
    Recipe,
    SamPrompt,
    draw_recipes,
    encode_sam_prompts,
    encoder_prompt_sets,
    sam_prompt_sets,
    sample_sam_prompt,
    stack_prompt_sets,
)
from prosam.methods.cpc.sources import EncoderPromptSource, SamPromptSource, prompt_network_encoder
from prosam.methods.overlaps import resolve_overlaps

__all__ = [
    "CPC_KINDS",
    "BilevelCalibrator",
    "BilevelConfig",
    "CPCMethod",
    "CausalPromptLearner",
    "DecoderAdapter",
    "DecoderLoRA",
    "EncoderPromptSource",
    "EntityPrediction",
    "LossTerms",
    "LossWeights",
    "PromptSets",
    "PromptWeights",
    "Recipe",
    "SamPrompt",
    "SamPromptSource",
    "SupportItem",
    "TokenOffsets",
    "build_adapter",
    "build_cpc",
    "calibrated_prompt",
    "combine_weights",
    "cumulative_loss",
    "decode_sets",
    "draw_recipes",
    "encode_sam_prompts",
    "encoder_prompt_sets",
    "one_hot_weights",
    "prompt_network_encoder",
    "resolve_overlaps",
    "sam_prompt_sets",
    "sample_sam_prompt",
    "stack_prompt_sets",
    "support_item",
    "uniform_weights",
]
