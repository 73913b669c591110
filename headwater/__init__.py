"""headwater: trace behaviours of a preference-trained model back to the DPO pairs that taught them.

Layers (data flows one way): ``headwater.kernels`` ← ``headwater.engine`` ← ``headwater``.
"""
__version__ = "0.1.0"
