"""The ATRank-MT model: plain ``nn.Module``s, usable without Lightning or Hydra."""

from atrank.model.atrank import ATRankModel, ModelOutput, build_model
from atrank.model.attention import MultiHeadAttentionBlock
from atrank.model.config import SCORERS, SCORES, DataShape, ModelConfig, ScoreKind, ScorerKind
from atrank.model.embedding import BehaviourEmbedding
from atrank.model.encoder import (
    ENCODERS,
    ATRankEncoder,
    EncoderFactory,
    HistoryEncoder,
    NoHistoryEncoder,
)
from atrank.model.heads import TaskHead
from atrank.model.loss import masked_bce_with_logits, masked_mean, multitask_loss

__all__ = [
    "ENCODERS",
    "SCORERS",
    "SCORES",
    "ATRankEncoder",
    "ATRankModel",
    "BehaviourEmbedding",
    "DataShape",
    "EncoderFactory",
    "HistoryEncoder",
    "ModelConfig",
    "ModelOutput",
    "MultiHeadAttentionBlock",
    "NoHistoryEncoder",
    "ScoreKind",
    "ScorerKind",
    "TaskHead",
    "build_model",
    "masked_bce_with_logits",
    "masked_mean",
    "multitask_loss",
]
