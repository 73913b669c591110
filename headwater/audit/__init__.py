"""The concept audit of preference data before training (method.md §6): sparse autoencoders on the
pre-DPO model's activations, per-response features, concept statistics, cards and feedback."""
