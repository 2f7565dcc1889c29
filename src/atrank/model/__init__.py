"""The ATRank-MT model: plain ``nn.Module``s, usable without Lightning or Hydra."""

from atrank.model.atrank import ATRankModel, ModelOutput, build_model
from atrank.model.attention import SCORES, MultiHeadAttentionBlock, ScoreKind
from atrank.model.embedding import BehaviourEmbedding
from atrank.model.encoder import (
    ENCODERS,
    ATRankEncoder,
    EncoderArgs,
    EncoderFactory,
    HistoryEncoder,
    NoHistoryEncoder,
)
from atrank.model.heads import SCORERS, ScorerKind, TaskHead
from atrank.model.loss import masked_bce_with_logits, masked_mean, multitask_loss

__all__ = [
    "ENCODERS",
    "SCORERS",
    "SCORES",
    "ATRankEncoder",
    "ATRankModel",
    "BehaviourEmbedding",
    "EncoderArgs",
    "EncoderFactory",
    "HistoryEncoder",
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
