"""The concept audit of preference data before training (method.md §6): sparse autoencoders on the
pre-DPO model's activations, per-response features, concept statistics, cards and feedback,
interventions and the prediction check.

The names most programs need are here; each module documents the rest.
"""
from headwater.audit.audit import AuditConfig, AuditResult, run_audit
from headwater.audit.cards import concept_cards, read_feedback, write_feedback_template
from headwater.audit.features import FeatureStore, encode_features
from headwater.audit.sae import SparseAutoencoder, SparseCode
from headwater.audit.sae_io import load_sae, load_sparsify, save_sae, save_sparsify
from headwater.audit.sae_training import SAETrainingConfig, evaluate_sae, train_sae
from headwater.audit.token_stream import ResponseTokenStream

__all__ = [
    "AuditConfig", "AuditResult", "FeatureStore", "ResponseTokenStream", "SAETrainingConfig", "SparseAutoencoder",
    "SparseCode", "concept_cards", "encode_features", "evaluate_sae", "load_sae", "load_sparsify", "read_feedback",
    "run_audit", "save_sae", "save_sparsify", "train_sae", "write_feedback_template",
]
