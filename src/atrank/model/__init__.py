"""The ATRank-MT model: plain ``nn.Module``s, usable without Lightning or Hydra."""

from atrank.model.atrank import ATRankModel, ModelOutput, build_model
from atrank.model.attention import MultiHeadAttentionBlock
from atrank.model.config import (
    DIN_ACTIVATIONS,
    SCORERS,
    SCORES,
    DataShape,
    DINActivation,
    ModelConfig,
    ScoreKind,
    ScorerKind,
)
from atrank.model.din import Dice, DINHead, LocalActivationUnit
from atrank.model.embedding import BehaviourEmbedding
from atrank.model.encoder import (
    ENCODERS,
    ATRankEncoder,
    EncoderFactory,
    HeadKind,
    HistoryEncoder,
    NoHistoryEncoder,
)
from atrank.model.heads import ScoringHead, TaskHead
from atrank.model.loss import masked_bce_with_logits, masked_mean, multitask_loss

__all__ = [
    "DIN_ACTIVATIONS",
    "ENCODERS",
    "SCORERS",
    "SCORES",
    "ATRankEncoder",
    "ATRankModel",
    "BehaviourEmbedding",
    "DINActivation",
    "DINHead",
    "DataShape",
    "Dice",
    "EncoderFactory",
    "HeadKind",
    "HistoryEncoder",
    "LocalActivationUnit",
    "ModelConfig",
    "ModelOutput",
    "MultiHeadAttentionBlock",
    "NoHistoryEncoder",
    "ScoreKind",
    "ScorerKind",
    "ScoringHead",
    "TaskHead",
    "build_model",
    "masked_bce_with_logits",
    "masked_mean",
    "multitask_loss",
]
