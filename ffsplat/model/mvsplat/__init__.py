"""MVSplat-compatible geometry (backbone, cost volume, depth, Gaussian adapter) under ffsplat's
semantic conditioning and heads; loads MVSplat's released encoder and UniMatch's backbone weights.

Modules: :mod:`.config` (``MVSplatConfig``), :mod:`.backbone` (UniMatch CNN + multi-view
transformer), :mod:`.unet` (MVSplat's post-norm U-Net with cross-view attention), :mod:`.depth`
(cost volume, refinement, depth regressor and upsampler), :mod:`.adapter` (Gaussian adapter),
:mod:`.net` (``MVSplatSemanticNet``, registered as ``model.name: mvsplat``), :mod:`.keymap`
(checkpoint key maps and strict loading).
"""
