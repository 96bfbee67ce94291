"""Steering: the typed application, the hooks that apply it, the activation cache, the vector
methods (caa, pca, probe, model_diff) and block-output reuse above the steered layer."""
